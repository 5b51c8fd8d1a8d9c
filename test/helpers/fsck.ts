/**
 * Runs the built `strata fsck` (bin/strata: build first) against a stopped daemon's root, so a test can assert
 * after a fault that the stores keep their invariants: `expect((await fsckRoot(d)).violations).toEqual([])`.
 *
 * `configOrRoot`: a StartedDaemon (its config file), a config file path (*.toml), or a root directory laid out
 * as stratad's (test/gc/harness.ts opens one in process: close it first, fsck refuses a root another process
 * holds open). For a bare root, a config naming it is written to a temp directory, with a state dir and socket
 * of its own.
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FsckReport } from '../../src/fsck/index.js';
import { STRATA } from './paths.js';
import { tempDir } from './temp.js';

export type { FsckFinding, FsckReport } from '../../src/fsck/index.js';

export type FsckTarget = string | { configPath: string };

export interface FsckRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `strata fsck <args>` against the target; resolves with the exit code and output, whatever the code. */
export async function runFsck(target: FsckTarget, args: string[] = []): Promise<FsckRun> {
  let configPath: string;
  let cleanup = async () => {};
  if (typeof target === 'object') configPath = target.configPath;
  else if (target.endsWith('.toml')) configPath = target;
  else {
    const t = await tempDir('strata-fsck-');
    cleanup = t.cleanup;
    configPath = join(t.path, 'config.toml');
    const state = join(t.path, 'state');
    await writeFile(configPath, `version = 2\nroot = ${JSON.stringify(target)}\nstate = ${JSON.stringify(state)}\n[grpc]\naddress = ${JSON.stringify(join(state, 'strata.sock'))}\n`);
  }
  try {
    return await new Promise<FsckRun>((resolve, reject) => {
      execFile(process.execPath, [STRATA, 'fsck', '--config', configPath, ...args], { maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
        if (code === -1) reject(err!);
        else resolve({ code, stdout, stderr });
      });
    });
  } finally {
    await cleanup();
  }
}

/**
 * The FsckReport of `strata fsck --json` (plus `extra` flags, e.g. ['--repair']). Throws when fsck could not
 * run (exit 2) or its exit status disagrees with the report.
 */
export async function fsckRoot(configOrRoot: FsckTarget, extra: string[] = []): Promise<FsckReport> {
  const r = await runFsck(configOrRoot, ['--json', ...extra]);
  if (r.code === 2) throw new Error(`strata fsck could not run: ${r.stderr.trim()}`);
  const report = JSON.parse(r.stdout) as FsckReport;
  const left = report.violations.filter((v) => !v.repaired).length;
  if ((left > 0 ? 1 : 0) !== r.code) throw new Error(`strata fsck exited ${r.code} with ${left} violation(s) left:\n${r.stdout}`);
  return report;
}
