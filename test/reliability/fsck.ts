/**
 * What the reliability tests check after a crash: `strata fsck --json` on the stopped root (test/helpers/fsck.ts)
 * must find no violation (crash leftovers are garbage); and the temporary mounts of a dead daemon must be undone
 * once a daemon starts again.
 */
import { readFileSync } from 'node:fs';
import type { StartedDaemon } from '../helpers/daemon.js';
import { fsckRoot } from '../helpers/fsck.js';

/** The violations `strata fsck` finds on a stopped daemon's root, one line each. */
export async function violations(d: StartedDaemon): Promise<string[]> {
  const report = await fsckRoot(d.configPath);
  return report.violations.map((v) => `${v.kind} ${v.object}: ${v.detail}`);
}

/** Temporary mounts (withTempMount: strata-mount-<pid>-*) of process `pid` still mounted. */
export function leftTempMounts(pid: number): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.includes(`/strata-mount-${pid}-`));
}
