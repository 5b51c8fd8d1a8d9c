/**
 * Redrawing a progress table in place on a terminal, as ctr's pkg/progress Writer does: each frame moves the
 * cursor back up over the lines the previous frame printed and writes the whole table again. Two things keep
 * the count of printed lines true, which is what the next frame relies on:
 *
 *  - every line is cut to the terminal's width, so none wraps (a wrapped line takes two rows but counts as one,
 *    and the next frame then starts one row too low, leaving a stale line and a half-overwritten one);
 *  - a frame taller than the terminal cannot be climbed back over (the cursor stops at the top row), so while
 *    the transfer runs only the last rows fit, under one line saying how many are hidden; the final frame,
 *    which is never climbed over again, prints every line.
 */

/** `s` cut to `width` characters (code points; the table is ASCII apart from digests and names). */
export function fit(s: string, width: number): string {
  if (width <= 0 || s.length <= width) return s;
  const chars = [...s];
  return chars.length <= width ? s : chars.slice(0, width).join('');
}

export interface Frame {
  /** What to write: the climb over the previous frame, then the lines, each cleared first. */
  text: string;
  /** Lines this frame printed (the next frame climbs over them). */
  drawn: number;
}

/**
 * One frame of `lines` after a previous one of `drawn` lines, for a terminal of `columns` x `rows` (0: unknown,
 * then nothing is cut or hidden).
 */
export function frame(lines: string[], drawn: number, columns: number, rows: number, final: boolean): Frame {
  let shown = lines;
  // Leave the last row for the cursor, which rests below the table.
  const room = rows > 1 ? rows - 1 : 0;
  if (!final && room > 0 && lines.length > room) {
    const hidden = lines.length - (room - 1);
    shown = [`(${hidden} more line${hidden === 1 ? '' : 's'} above)`, ...lines.slice(hidden)];
  }
  const up = drawn > 0 ? `\x1b[${drawn}A` : '';
  // \r: back to the first column whatever the terminal's newline mode; \x1b[2K: clear the row; \x1b[J at the
  // end: clear what a taller earlier frame left below.
  const body = shown.map((l) => `\r\x1b[2K${fit(l, columns)}\n`).join('');
  return { text: `${up}${body}\x1b[J`, drawn: shown.length };
}
