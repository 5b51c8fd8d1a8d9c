/**
 * strata image pull's progress on a real terminal (tmux, a pseudo-terminal of a chosen size) against a
 * docker-registry on loopback: the screen it leaves must hold every row of the table once, no line damaged by a
 * redraw that lost count, and the summary line once, whatever the width, and with more rows than the terminal
 * has. Without a terminal the progress stays plain lines.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { frame, fit } from '../../src/cli/progress.js';
import { run } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, type BuiltImage, type LayerSpec } from '../helpers/images.js';
import { STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { runInTerminal } from '../helpers/tmux.js';

let reg: StartedRegistry;
let d: StartedDaemon;
let dir: TempDir;
let small: BuiltImage;
let tall: BuiltImage;
const LONG = 'tty/progress-display/a-longer-repository-name:latest';

const layer = (name: string, n: number): LayerSpec => ({ compression: 'gzip', entries: [{ path: name, content: Buffer.alloc(n, name) }] });

beforeAll(async () => {
  dir = await tempDir();
  reg = await startRegistry();
  d = await startDaemon();
  small = await buildImage(dir.path, { basename: 'small', platforms: [{ layers: [layer('one', 50_000), layer('two', 20_000), layer('three', 5_000)] }] });
  await reg.pushOciLayout(small.layoutDir, 'tty/small:1');
  // A name long enough that the image row (name, status, digest) is wider than 120 columns.
  await reg.pushOciLayout(small.layoutDir, LONG);
  // More table rows (image, manifest, config, 24 layers) than a 20-row terminal has.
  tall = await buildImage(dir.path, { basename: 'tall', platforms: [{ layers: Array.from({ length: 24 }, (_, i) => layer(`f${i}`, 1000 + i)) }] });
  await reg.pushOciLayout(tall.layoutDir, 'tty/tall:1');
}, 120_000);

afterAll(async () => {
  await stopAll();
  await stopAllRegistries();
  await dir?.cleanup();
});

/** Every kind-ref row of the table the pull of `img` ends with, as the line prefixes the display gives them. */
function rowPrefixes(ref: string, img: BuiltImage): string[] {
  const m = img.manifests[0]!;
  const short = (x: string) => x.slice(7, 19);
  return [`image-${ref}:`, `manifest-${short(m.descriptor.digest)}:`, `config-${short(m.config.descriptor.digest)}:`, ...m.layers.map((l) => `layer-${short(l.descriptor.digest)}:`)];
}

/** Pulls `ref` in a fresh namespace in a `columns` x 20 terminal and checks the screen it leaves. */
async function pullOnTerminal(img: BuiltImage, repo: string, columns: number, ns: string): Promise<string[]> {
  const ref = `${reg.host}/${repo}`;
  const { status, lines } = await runInTerminal([process.execPath, STRATA, '--address', d.address, '-n', ns, 'image', 'pull', '--plain-http', ref], { columns, rows: 20 });
  const screen = lines.join('\n');
  expect(status, screen).toBe(0);
  const summary = `${ref} ${img.target.digest}`;
  const prefixes = rowPrefixes(ref, img).map((p) => fit(p, columns));
  // The summary (stdout, plain) once; every other line is one row of the table, each row exactly once.
  expect(lines.filter((l) => l === summary), screen).toHaveLength(1);
  const table = lines.filter((l) => l !== summary);
  expect(table, screen).toHaveLength(prefixes.length);
  for (const l of table) expect(l.length, `${l}\n${screen}`).toBeLessThanOrEqual(columns);
  const rowOf = (l: string) => prefixes.findIndex((p) => l.startsWith(p));
  expect(table.map(rowOf).sort((a, b) => a - b), screen).toEqual(prefixes.map((_, i) => i));
  // The last summary line comes after the table, and each row shows its final state where there is room for it.
  expect(lines.at(-1)).toBe(summary);
  for (const l of table.slice(1)) if (columns >= 40) expect(l, screen).toMatch(/^\S+:\s+(unpacked|done|exists)\b/);
  expect(table.find((l) => l.startsWith('image-')), screen).toMatch(columns >= 80 ? /^image-\S+:\s+pulled\s+sha256:[0-9a-f]+$/ : /^image-/);
  return lines;
}

describe('strata image pull on a terminal', () => {
  it('leaves every row once, no damaged line and the summary once in a 120x20 terminal', async () => {
    const lines = await pullOnTerminal(small, LONG, 120, 'tty-120');
    expect(lines.find((l) => l.startsWith('image-'))).toHaveLength(120);
  });

  it('cuts the rows to an 80-column terminal instead of letting them wrap', async () => {
    const lines = await pullOnTerminal(small, 'tty/small:1', 80, 'tty-80');
    // The image row (ref, status, digest) is longer than 80: cut, not wrapped onto a second row.
    expect(lines.find((l) => l.startsWith('image-'))).toHaveLength(80);
  });

  it('cuts the rows to a terminal narrower than a row (40 columns)', async () => {
    await pullOnTerminal(small, 'tty/small:1', 40, 'tty-40');
  });

  it('ends with every row once when the table is taller than the terminal', async () => {
    const lines = await pullOnTerminal(tall, 'tty/tall:1', 80, 'tty-tall');
    expect(lines.some((l) => l.includes('more line'))).toBe(false);
  });

  it('prints plain lines, without escape sequences, when stderr is not a terminal', async () => {
    const ref = `${reg.host}/tty/small:1`;
    const r = await run(process.execPath, [STRATA, '--address', d.address, '-n', 'tty-plain', 'image', 'pull', '--plain-http', ref]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toContain('\x1b');
    const lines = r.stderr.trimEnd().split('\n');
    for (const l of lines) expect(l).toMatch(/^(image|manifest|config|layer) \S+: [a-z]+/);
    expect(lines).toContain(`layer ${small.manifests[0]!.layers[2]!.descriptor.digest}: unpacked`);
    expect(r.stdout).toBe(`${ref} ${small.target.digest}\n`);
  });
});

describe('the progress frame', () => {
  it('climbs over the previous frame, clears each row, and cuts rows to the width', () => {
    const f = frame(['abcdef', 'xy'], 3, 4, 20, false);
    expect(f).toEqual({ text: '\x1b[3A\r\x1b[2Kabcd\n\r\x1b[2Kxy\n\x1b[J', drawn: 2 });
  });

  it('shows only the last rows while running when the table is taller than the terminal, and all of it at the end', () => {
    const lines = Array.from({ length: 30 }, (_, i) => `row ${i}`);
    const running = frame(lines, 0, 80, 20, false);
    expect(running.drawn).toBe(19);
    expect(running.text.split('\n')[0]).toBe('\r\x1b[2K(12 more lines above)');
    expect(running.text).toContain('row 29');
    expect(running.text).not.toContain('row 11\n');
    const last = frame(lines, running.drawn, 80, 20, true);
    expect(last.drawn).toBe(30);
    expect(last.text.startsWith('\x1b[19A')).toBe(true);
    expect(last.text).toContain('\r\x1b[2Krow 0\n');
  });
});
