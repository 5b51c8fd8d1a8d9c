/**
 * Walking a tree for the differ, in continuity's order: pre-order, the names of a directory sorted by byte
 * value with `/` lowest, so that two walks of two trees can be merged entry by entry (changes.ts). File names
 * that are not valid UTF-8 are refused: JavaScript strings could not name them back.
 */
import type { BigIntStats } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { notImplemented } from '../core/errdefs.js';

/** lstat calls in flight per directory. */
const STAT_BATCH = 32;

/** UTF-16 code unit mapped so that comparing mapped units orders strings by code point (= UTF-8 byte order). */
function unit(s: string, i: number): number {
  const c = s.charCodeAt(i);
  if (c === 0x2f) return -1; // '/' sorts before everything (continuity's directoryCompare)
  if (c >= 0xd800 && c <= 0xdfff) return c + 0x2000;
  if (c >= 0xe000) return c - 0x800;
  return c;
}

/** Orders paths the way both walks produce them: byte order with `/` lowest. */
export function comparePaths(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = unit(a, i) - unit(b, i);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return a.length - b.length < 0 ? -1 : a.length === b.length ? 0 : 1;
}

async function readNames(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  if (names.some((n) => n.includes('\uFFFD'))) {
    for (const raw of await readdir(dir, { encoding: 'buffer' })) {
      if (!Buffer.from(raw.toString('utf8'), 'utf8').equals(raw)) {
        throw notImplemented(`file name ${JSON.stringify(raw.toString('utf8'))} in ${dir} is not valid UTF-8`);
      }
    }
  }
  return names.sort(comparePaths);
}

export interface WalkEntry {
  path: string;
  stat: BigIntStats;
}

/** lstat of every name in dir, a few at a time (the thread pool does them in parallel). */
async function lstatAll(dir: string, names: string[]): Promise<BigIntStats[]> {
  const out: BigIntStats[] = new Array(names.length);
  for (let i = 0; i < names.length; i += STAT_BATCH) {
    const batch = names.slice(i, i + STAT_BATCH);
    const stats = await Promise.all(batch.map((n) => lstat(join(dir, n), { bigint: true })));
    for (let j = 0; j < stats.length; j++) out[i + j] = stats[j]!;
  }
  return out;
}

/** Every entry below root (not root itself), pre-order, names sorted: filepath.Walk's order. */
export async function* walk(root: string): AsyncGenerator<WalkEntry> {
  const frame = async (rel: string) => {
    const dir = rel ? join(root, rel) : root;
    const names = await readNames(dir);
    return { rel, names, stats: await lstatAll(dir, names), i: 0 };
  };
  const stack = [await frame('')];
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    if (top.i >= top.names.length) {
      stack.pop();
      continue;
    }
    const i = top.i++;
    const path = top.rel ? `${top.rel}/${top.names[i]!}` : top.names[i]!;
    const stat = top.stats[i]!;
    yield { path, stat };
    if (stat.isDirectory()) stack.push(await frame(path));
  }
}
