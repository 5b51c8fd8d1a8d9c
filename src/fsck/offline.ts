/**
 * fsck runs on a stopped daemon's root only. A daemon serving the root is found two ways, either of which
 * refuses: the configured socket answers, or another process holds one of the root's SQLite files open (a
 * running stratad keeps its metadata database and every snapshotter's records open for its whole life, whatever
 * address it serves; /proc/<pid>/fd shows them, for every process when run as root).
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { failedPrecondition } from '../core/errdefs.js';
import { socketAnswers } from '../core/socket.js';


/** Pids of other processes with one of `files` (or its -wal/-shm sibling) open. */
export function holders(files: string[]): number[] {
  const wanted = new Set(files.flatMap((f) => [f, `${f}-wal`, `${f}-shm`]));
  const out: number[] = [];
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((n) => /^\d+$/.test(n));
  } catch {
    return out;
  }
  for (const pid of pids) {
    if (Number(pid) === process.pid) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours to read
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (wanted.has(target)) {
        out.push(Number(pid));
        break;
      }
    }
  }
  return out;
}

/** Throws FAILED_PRECONDITION when a daemon (or any other process) serves or holds the root. */
export async function refuseIfServed(address: string, dbFiles: string[]): Promise<void> {
  if (address && (await socketAnswers(address))) {
    throw failedPrecondition('a daemon is serving this root (its socket answers): stop it before running fsck');
  }
  const pids = holders(dbFiles);
  if (pids.length > 0) {
    throw failedPrecondition(`process ${pids.join(', ')} holds this root's databases open (a running daemon?): stop it before running fsck`);
  }
}
