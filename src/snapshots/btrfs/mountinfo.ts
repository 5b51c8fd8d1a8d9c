/**
 * Which mount a path lives on, from /proc/self/mountinfo (containerd's mount.Lookup): the mount point, the
 * filesystem type and the mount source (the device, for block filesystems). Used by the btrfs snapshotter
 * (device for its mounts, type for the plugin check) and by the zfs plugin's check.
 */
import { readFile, realpath } from 'node:fs/promises';
import { dirname, sep } from 'node:path';

export interface MountEntry {
  /** Where the filesystem is mounted. */
  mountPoint: string;
  /** The directory of the filesystem that is mounted there ('/' unless it is a bind or a subvolume). */
  root: string;
  fstype: string;
  source: string;
  options: string[];
  superOptions: string[];
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

export function parseMountInfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const fields = line.split(' ');
    const sepAt = fields.indexOf('-', 6);
    if (sepAt < 0 || fields.length < sepAt + 3) continue;
    out.push({
      root: unescape(fields[3]!),
      mountPoint: unescape(fields[4]!),
      options: fields[5]!.split(','),
      fstype: unescape(fields[sepAt + 1]!),
      source: unescape(fields[sepAt + 2]!),
      superOptions: (fields[sepAt + 3] ?? '').split(','),
    });
  }
  return out;
}

/** The nearest existing ancestor of path (path itself if it exists), resolved through symlinks. */
export async function existingAncestor(path: string): Promise<string> {
  let p = path;
  for (;;) {
    try {
      return await realpath(p);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
      const up = dirname(p);
      if (up === p) throw err;
      p = up;
    }
  }
}

/**
 * The mount holding path (or, if path does not exist yet, the one it would be created on): the entry with
 * the longest mount point containing it, the last one when several are stacked on the same point.
 */
export async function lookupMount(path: string): Promise<MountEntry> {
  const real = await existingAncestor(path);
  const entries = parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
  let best: MountEntry | undefined;
  for (const m of entries) {
    const inside = m.mountPoint === '/' || real === m.mountPoint || real.startsWith(m.mountPoint + sep);
    if (inside && (!best || m.mountPoint.length >= best.mountPoint.length)) best = m;
  }
  if (!best) throw new Error(`no mount found for ${path}`);
  return best;
}
