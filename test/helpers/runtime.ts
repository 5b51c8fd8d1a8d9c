/**
 * For tests that run tasks: tasks outlive the daemon that made them (their monitors keep them, by design), so a
 * test file that ends, passed or not, must kill them itself, and must undo their mounts before its temp
 * directory is removed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';

/** The mount points at or below `prefix`, in the order they were mounted. */
export function mountsUnder(prefix: string): string[] {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m.startsWith(prefix));
}

export interface RuntimeDirs {
  /** The task manager's bundle root (<root>/<namespace>/<id>, each bundle with its monitor.json). */
  taskRoot: string;
  /** runc's state root (<runcRoot>/<namespace>/<id>). */
  runcRoot: string;
  /** Unmount everything at or below this path. */
  mountsUnder: string;
  /**
   * The containerd namespace whose parent cgroup (/<namespace> in every hierarchy) to remove: ctr's spec puts a
   * container in /<namespace>/<id>, and runc removes a container's cgroup but not its parent (neither does
   * containerd).
   */
  cgroupNamespace?: string;
}

/** Kills every monitor under a task root, removes what runc still knows, unmounts what is left. */
export async function cleanupRuntime(dirs: RuntimeDirs): Promise<void> {
  if (existsSync(dirs.taskRoot)) {
    for (const ns of readdirSync(dirs.taskRoot).filter((n) => !n.startsWith('.'))) {
      for (const id of readdirSync(join(dirs.taskRoot, ns))) {
        try {
          process.kill((JSON.parse(readFileSync(join(dirs.taskRoot, ns, id, 'monitor.json'), 'utf8')) as { pid: number }).pid, 'SIGKILL');
        } catch {
          // no monitor
        }
      }
    }
  }
  if (existsSync(dirs.runcRoot)) {
    for (const ns of readdirSync(dirs.runcRoot)) {
      for (const id of readdirSync(join(dirs.runcRoot, ns))) {
        try {
          execFileSync('runc', ['--root', join(dirs.runcRoot, ns), 'delete', '--force', id], { stdio: 'ignore' });
        } catch {
          // gone
        }
      }
    }
  }
  for (const m of mountsUnder(dirs.mountsUnder).reverse()) {
    try {
      execFileSync('umount', ['-l', m], { stdio: 'ignore' });
    } catch {
      // gone
    }
  }
  if (dirs.cgroupNamespace) {
    for (const ctl of readdirSync('/sys/fs/cgroup')) {
      try {
        rmdirSync(join('/sys/fs/cgroup', ctl, dirs.cgroupNamespace));
      } catch {
        // not there (or not a hierarchy)
      }
    }
  }
}
