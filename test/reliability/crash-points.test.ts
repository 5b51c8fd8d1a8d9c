/**
 * The crash walk: every crash point of src/core/crashpoint.ts, one daemon each. A survey run (STRATA_CRASH_TRACE)
 * of the three operations (content, snapshots, images+GC) finds which operation reaches which point, and the
 * test fails naming any point never reached. Then, for every point: stratad starts with STRATA_CRASH_AT=<point>,
 * the operation that reaches it runs until the daemon kills itself there (SIGKILL), the stopped root is
 * checked (no violation), and a daemon started without the variable runs the same operation again to success,
 * its data read back.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CRASH_POINTS, type CrashPoint } from '../../src/core/crashpoint.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { startRegistry, stopAllRegistries } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { contentOperation, imageOperation, LEASE, makeFixture, NS, snapshotOperation, type Fixture } from './walk.js';
import { kindOf } from '../helpers/errors.js';
import { Kind } from '../../src/api/gen/containerd/services/snapshots/v1/snapshots.js';
import { leftTempMounts, violations } from './fsck.js';

let dir: TempDir;
let f: Fixture;

beforeAll(async () => {
  dir = await tempDir('strata-crash-walk-');
  f = await makeFixture(dir.path, await startRegistry());
});

afterAll(async () => {
  await stopAll();
  await stopAllRegistries();
  await dir?.cleanup();
});

interface Operation {
  name: string;
  run: (d: StartedDaemon) => Promise<void>;
}

const operations: Operation[] = [
  { name: 'content ingest, commit, delete, abort', run: (d) => contentOperation(d, f) },
  { name: 'snapshot prepare, commit, view, diff, remove', run: (d) => snapshotOperation(d) },
  { name: 'pull and unpack, image delete with a synchronous GC, lease delete', run: (d) => imageOperation(d, f) },
];

/** How long a crash run waits for a point reached after the operation answered (background removals). */
const LATE_MS = 5_000;
/** Points walked at the same time (each on its own root and daemon). */
const JOBS = Number(process.env.STRATA_CRASH_WALK_JOBS ?? 2);

/**
 * One point: a daemon that dies there while running `op`, the check of its stopped root, then a daemon without
 * the variable that runs `op` again. Returns what went wrong.
 */
async function walkPoint(point: CrashPoint, op: Operation): Promise<string[]> {
  const failures: string[] = [];
  // A point the daemon's start reaches (the scheduler's first collection) kills it before it serves.
  const crashing = await startDaemon({ gc: true, logLevel: 'info', allowExit: true, env: { STRATA_CRASH_AT: point } });
  const pid = crashing.proc.pid!;
  const diedAtStart = crashing.proc.signalCode !== null || crashing.proc.exitCode !== null;
  const outcome = diedAtStart ? 'died' : await Promise.race([
    op.run(crashing).then(
      () => 'finished',
      (err: unknown) => `failed: ${(err as Error).message}`,
    ),
    crashing.waitExit().then(() => 'died'),
  ]);
  if (outcome !== 'died') await Promise.race([crashing.waitExit(), sleep(LATE_MS)]);
  if (crashing.proc.signalCode !== 'SIGKILL' || !crashing.logs.includes(`strata crash point ${point}\n`)) {
    failures.push(`${point}: the daemon did not die there (the operation ${outcome})`);
    await crashing.kill9();
  }
  const found = await violations(crashing);
  if (found.length > 0) failures.push(`${point}: ${found.join('; ')}`);
  const d = await crashing.restart({ env: {}, allowExit: false });
  try {
    const left = leftTempMounts(pid);
    if (left.length > 0) failures.push(`${point}: temporary mounts of the dead daemon still there after the restart: ${left.join(', ')}`);
    if (point === 'overlay.commit.after-record' || point === 'snapshot.commit.after-backend') {
      // The backend committed walk-a as walk-base, the record did not follow: the start finished the commit.
      const c = d.client(NS, LEASE);
      try {
        const st = await c.call(c.snapshots, c.snapshots.stat, { snapshotter: 'overlayfs', key: 'walk-base' });
        if (st.info?.kind !== Kind.COMMITTED) failures.push(`${point}: walk-base is not committed after the restart`);
        if (await kindOf(c.call(c.snapshots, c.snapshots.stat, { snapshotter: 'overlayfs', key: 'walk-a' })) !== 'not found') {
          failures.push(`${point}: walk-a is still there after the restart`);
        }
      } catch (err) {
        failures.push(`${point}: the interrupted commit was not finished at the restart: ${(err as Error).message}`);
      } finally {
        c.close();
      }
    }
    try {
      await op.run(d);
    } catch (err) {
      failures.push(`${point}: the retry of "${op.name}" failed: ${(err as Error).message}`);
    }
  } finally {
    await d.stop();
    await d.dir.cleanup();
  }
  return failures;
}

describe('crash points', () => {
  it('every crash point is reached by an operation, and a crash at each leaves no fsck violation and an operation that succeeds when retried', async () => {
    const started = Date.now();
    const trace = join(dir.path, 'trace');
    writeFileSync(trace, '');
    const lines = () => readFileSync(trace, 'utf8').split('\n').filter(Boolean);

    // The survey: which operation reaches which point first.
    const reachedBy = new Map<string, Operation>();
    const d = await startDaemon({ gc: true, logLevel: 'info', env: { STRATA_CRASH_TRACE: trace } });
    for (const op of operations) {
      const before = lines().length;
      await op.run(d);
      await sleep(500); // background removals
      for (const p of lines().slice(before)) if (!reachedBy.has(p)) reachedBy.set(p, op);
    }
    await d.stop();
    const never = CRASH_POINTS.filter((p) => !reachedBy.has(p));
    expect(never, 'crash points no operation of the walk reaches').toEqual([]);
    const unknownPoints = [...reachedBy.keys()].filter((p) => !(CRASH_POINTS as readonly string[]).includes(p));
    expect(unknownPoints).toEqual([]);

    // Every point on a root of its own (a failure at one point cannot spoil the next), JOBS points at a time.
    const failures: string[] = [];
    const queue = [...CRASH_POINTS];
    const worker = async () => {
      for (let point = queue.shift(); point; point = queue.shift()) failures.push(...(await walkPoint(point, reachedBy.get(point)!)));
    };
    await Promise.all(Array.from({ length: JOBS }, worker));
    expect(failures).toEqual([]);
    process.stderr.write(`crash walk: ${CRASH_POINTS.length} points in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
    expect(existsSync(trace)).toBe(true);
  }, 900_000);
});
