/** Finding and detaching lazyfs mounts from /proc/self/mountinfo (no FUSE binding needed: the daemon uses it). */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { FS_NAME } from './protocol.js';

const execFileP = promisify(execFile);

const unescapeMountinfo = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** FUSE mounts under `dir` with lazyfs's fsname (left by a lazyfs that died), from /proc/self/mountinfo. */
export function lazyfsMountsUnder(dir: string): string[] {
  const prefix = resolve(dir) + '/';
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    if (sep < 0) continue;
    const mp = unescapeMountinfo(fields[4] ?? '');
    const fstype = fields[sep + 1] ?? '';
    const source = fields[sep + 2] ?? '';
    if (fstype.startsWith('fuse') && source === FS_NAME && mp.startsWith(prefix)) out.push(mp);
  }
  return out;
}

/** Detaches a mount (lazily: a dead FUSE mount, or one still in use). Never throws for "not mounted". */
export async function detach(mountpoint: string): Promise<void> {
  await execFileP('umount', ['-l', mountpoint]).catch(() => undefined);
}

