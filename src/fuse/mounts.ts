/** Mount-table helpers of src/fuse: is something mounted at a path, and the kernel's readahead of a FUSE mount. */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Logger } from '../log/index.js';

/** mountinfo escapes space, tab, newline and backslash as octal. */
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** Whether something is mounted at a path, from /proc/self/mountinfo (no stat: a dead FUSE mount fails it). */
export async function isMounted(path: string): Promise<boolean> {
  const target = resolve(path);
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((line) => line.length > 0 && unescape(line.split(' ')[4] ?? '') === target);
}

/**
 * Waits until the new mount answers (a stat of its root: the kernel holds requests until FUSE's INIT is done),
 * then raises the readahead of its backing device to `kib`. The kernel caps a FUSE mount's readahead at
 * what it proposed in INIT (128 KiB, so reads of 128 KiB at a time); raised afterwards, a sequential reader's
 * requests grow to 1 MiB (the request size libfuse 3 negotiates): a quarter of the round trips to a slow
 * source. Needs root (sysfs); without it the default stays, which is only slower.
 * The stat goes through the libuv threadpool: the serving event loop stays free to answer it.
 */
export async function settleAndTuneReadahead(mountpoint: string, kib: number, log?: Logger): Promise<void> {
  const st = await stat(mountpoint);
  if (kib <= 0) return;
  // An anonymous device's number: major (12 bits, then 20 more above the minor), minor (8 bits, then 12 more).
  const dev = st.dev;
  const major = ((dev >>> 8) & 0xfff) | Math.floor(dev / 2 ** 32) & ~0xfff;
  const minor = (dev & 0xff) | ((dev >>> 12) & 0xfff00);
  try {
    await writeFile(`/sys/class/bdi/${major}:${minor}/read_ahead_kb`, String(kib));
  } catch (err) {
    log?.debug('fuse readahead left at the default', { error: (err as NodeJS.ErrnoException).code });
  }
}
