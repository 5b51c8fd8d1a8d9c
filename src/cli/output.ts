/**
 * Output helpers shared by every command: one table printer with Go text/tabwriter's layout (so listings line
 * up exactly as ctr's do), ctr's human sizes and ages, RFC 3339 local times, JSON, and back-pressure-aware
 * writes to stdout.
 */
import { once } from 'node:events';
import { toRFC3339Nano } from '../core/time.js';

export interface TabOptions {
  /** Minimal cell width including padding. */
  minwidth?: number;
  /** Width of a tab character when padding with tabs. */
  tabwidth?: number;
  /** Added to the widest cell of a column. */
  padding?: number;
  /** ' ' pads with spaces; '\t' pads with tabs (cells then end on tab stops). */
  padchar?: ' ' | '\t';
}

const textWidth = (s: string): number => [...s].length;

/**
 * Formats text the way Go's tabwriter does: every line is split on '\t'; each tab-terminated cell belongs to a
 * column, and a column is as wide as its widest cell plus padding over each run of consecutive lines that have
 * a cell in it. The text after a line's last tab is not aligned.
 */
export function tabwrite(text: string, opts: TabOptions = {}): string {
  const { minwidth = 1, tabwidth = 8, padding = 1, padchar = ' ' } = opts;
  const cells = text.split('\n').map((l) => l.split('\t'));
  const rendered: string[] = new Array<string>(cells.length).fill('');
  const widths: number[] = [];

  const pad = (textw: number, cellw: number): string => {
    if (padchar === '\t') {
      const w = Math.ceil(cellw / tabwidth) * tabwidth;
      return '\t'.repeat(Math.ceil((w - textw) / tabwidth));
    }
    return ' '.repeat(cellw - textw);
  };

  const writeLines = (line0: number, line1: number): void => {
    for (let i = line0; i < line1; i++) {
      let s = '';
      cells[i]!.forEach((c, j) => {
        s += c;
        if (j < widths.length) s += pad(textWidth(c), widths[j]!);
      });
      rendered[i] = s;
    }
  };

  const format = (line0: number, line1: number): void => {
    const column = widths.length;
    for (let t = line0; t < line1; t++) {
      if (column >= cells[t]!.length - 1) continue;
      // A block of lines with a cell in this column starts here.
      writeLines(line0, t);
      line0 = t;
      let width = minwidth;
      for (; t < line1; t++) {
        const line = cells[t]!;
        if (column >= line.length - 1) break;
        width = Math.max(width, textWidth(line[column]!) + padding);
      }
      widths.push(width);
      format(line0, t);
      widths.pop();
      line0 = t;
    }
    writeLines(line0, line1);
  };

  format(0, cells.length);
  return rendered.join('\n');
}

/** The rows of a listing as tab-separated lines, formatted as one table. */
export function table(rows: string[][], opts: TabOptions & { terminated?: boolean } = {}): string {
  const end = opts.terminated ? '\t' : '';
  return tabwrite(rows.map((r) => r.join('\t') + end + '\n').join(''), opts);
}

/** docker/go-units HumanSize: decimal units, four significant digits ("11B", "1.536kB", "2.5MB"). */
export function humanSize(size: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB', 'EB', 'ZB', 'YB'];
  let i = 0;
  while (size >= 1000 && i < units.length - 1) {
    size /= 1000;
    i++;
  }
  return `${Number(size.toPrecision(4))}${units[i]}`;
}

/** docker/go-units HumanDuration ("Less than a second", "5 minutes", "About an hour", "3 days"). */
export function humanDuration(ms: number): string {
  const seconds = Math.trunc(ms / 1000);
  if (seconds < 1) return 'Less than a second';
  if (seconds === 1) return '1 second';
  if (seconds < 60) return `${seconds} seconds`;
  const minutes = Math.trunc(ms / 60_000);
  if (minutes === 1) return 'About a minute';
  if (minutes < 60) return `${minutes} minutes`;
  const hours = Math.trunc(ms / 3_600_000 + 0.5);
  if (hours === 1) return 'About an hour';
  if (hours < 48) return `${hours} hours`;
  if (hours < 24 * 7 * 2) return `${Math.trunc(hours / 24)} days`;
  if (hours < 24 * 30 * 2) return `${Math.trunc(hours / 24 / 7)} weeks`;
  if (hours < 24 * 365 * 2) return `${Math.trunc(hours / 24 / 30)} months`;
  return `${Math.trunc(ms / 3_600_000 / 24 / 365)} years`;
}

/** How long ago a time was, or "-" when the server sent none. */
export const age = (d: Date | undefined): string => (d ? humanDuration(Date.now() - d.getTime()) : '-');

/** Go's time.RFC3339 in local time: "2024-05-01T12:00:00+02:00", or "...Z" in UTC. */
export function rfc3339(d: Date): string {
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  const east = -d.getTimezoneOffset();
  const zone = east === 0 ? 'Z' : `${east > 0 ? '+' : '-'}${p(Math.trunc(Math.abs(east) / 60))}:${p(Math.abs(east) % 60)}`;
  return (
    `${p(d.getFullYear(), 4)}-${p(d.getMonth() + 1)}-${p(d.getDate())}` +
    `T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}${zone}`
  );
}

/** Labels as ctr prints them: sorted "k=v" joined by commas. */
export function formatLabels(labels: Record<string, string> | undefined, empty = ''): string {
  const pairs = Object.entries(labels ?? {}).map(([k, v]) => `${k}=${v}`);
  return pairs.length === 0 ? empty : pairs.sort().join(',');
}

/** A time in JSON output: RFC 3339 with nanoseconds, as Go's time.RFC3339Nano in UTC (what ctr's JSON shows). */
export const isoOrNull = (d: Date | undefined): string | null => (d ? toRFC3339Nano(d) : null);

/** Writes to stdout, waiting for 'drain' when the pipe is full. */
export async function write(chunk: string | Uint8Array): Promise<void> {
  if (!process.stdout.write(chunk)) await once(process.stdout, 'drain');
}

export const printJson = (value: unknown): Promise<void> => write(JSON.stringify(value, null, 2) + '\n');

export const printLines = (lines: string[]): Promise<void> =>
  lines.length === 0 ? Promise.resolve() : write(lines.join('\n') + '\n');
