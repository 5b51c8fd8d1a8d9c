/**
 * Random-timing kills on top of the crash walk: a mixed workload (content ingest and delete, pull and unpack
 * with an image delete and a synchronous GC, snapshot loops) runs against a real stratad, which is killed with
 * SIGKILL after a random delay, KILLS times. After each kill: the stopped root has no violation, and a daemon
 * started again runs every operation of the workload to success.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { startRegistry, stopAllRegistries } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { leftTempMounts, violations } from './fsck.js';
import { contentOperation, imageOperation, makeFixture, snapshotOperation, type Fixture } from './walk.js';

const KILLS = Number(process.env.STRATA_RANDOM_KILLS ?? 10);

let dir: TempDir;
let f: Fixture;

beforeAll(async () => {
  dir = await tempDir('strata-random-kills-');
  f = await makeFixture(dir.path, await startRegistry());
});

afterAll(async () => {
  await stopAll();
  await stopAllRegistries();
  await dir?.cleanup();
});

/** Runs op again and again until stopped (errors are expected once the daemon is gone). */
async function loop(op: () => Promise<void>, stop: { now: boolean }): Promise<number> {
  let done = 0;
  while (!stop.now) {
    try {
      await op();
      done++;
    } catch {
      if (!stop.now) await sleep(10);
    }
  }
  return done;
}

describe('random kills', () => {
  it(`stratad killed at ${KILLS} random moments of a mixed workload leaves no violation, and the workload then succeeds`, async () => {
    let d: StartedDaemon = await startDaemon({ gc: true, logLevel: 'info' });
    const failures: string[] = [];
    const delays: number[] = [];
    for (let i = 0; i < KILLS; i++) {
      const stop = { now: false };
      const current = d;
      const workload = Promise.all([
        loop(() => contentOperation(current, f), stop),
        loop(() => snapshotOperation(current), stop),
        loop(() => imageOperation(current, f), stop),
      ]);
      const delay = 200 + Math.floor(Math.random() * 2500);
      delays.push(delay);
      await sleep(delay);
      const pid = current.proc.pid!;
      await current.kill9();
      stop.now = true;
      await workload;
      const found = await violations(current);
      if (found.length > 0) failures.push(`kill ${i + 1} after ${delay} ms: ${found.join('; ')}`);
      d = await current.restart();
      const left = leftTempMounts(pid);
      if (left.length > 0) failures.push(`kill ${i + 1}: temporary mounts of the dead daemon still there after the restart: ${left.join(', ')}`);
      for (const [name, op] of [
        ['content', () => contentOperation(d, f)],
        ['snapshots', () => snapshotOperation(d)],
        ['images', () => imageOperation(d, f)],
      ] as const) {
        try {
          await op();
        } catch (err) {
          failures.push(`kill ${i + 1} after ${delay} ms: ${name} failed after the restart: ${(err as Error).message}`);
        }
      }
    }
    await d.stop();
    process.stderr.write(`random kills: delays ${delays.join(', ')} ms\n`);
    expect(failures).toEqual([]);
  }, 600_000);
});
