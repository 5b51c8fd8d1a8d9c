/** Whether something is mounted at a path, from /proc/self/mountinfo (no stat: a dead FUSE mount hangs or fails it). */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';

/** mountinfo escapes space, tab, newline and backslash as octal. */
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

export async function isMounted(path: string): Promise<boolean> {
  const target = resolve(path);
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((line) => line.length > 0 && unescape(line.split(' ')[4] ?? '') === target);
}
