/**
 * What the reliability tests check after a crash: `strata fsck --json` on the stopped root (test/helpers/fsck.ts,
 * the fsck contract of wave 4) when it is there, else checkRoot (walk.ts), a smaller check of the same invariants;
 * and that the temporary mounts of a dead daemon are undone once a daemon starts again.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { StartedDaemon } from '../helpers/daemon.js';
import { REPO } from '../helpers/paths.js';
import { checkRoot } from './walk.js';

interface Finding {
  kind: string;
  object: string;
  detail: string;
}

/** The violations on a stopped daemon's root. */
export async function violations(d: StartedDaemon): Promise<string[]> {
  const helper = join(REPO, 'test/helpers/fsck.ts');
  if (!existsSync(helper)) return checkRoot(d.root);
  const mod = (await import(helper)) as { fsckRoot: (configOrRoot: string) => Promise<{ violations: Finding[] }> };
  const report = await mod.fsckRoot(d.configPath);
  return report.violations.map((v) => `${v.kind} ${v.object}: ${v.detail}`);
}

/** Temporary mounts (withTempMount: strata-mount-<pid>-*) of process `pid` still mounted. */
export function leftTempMounts(pid: number): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.includes(`/strata-mount-${pid}-`));
}
