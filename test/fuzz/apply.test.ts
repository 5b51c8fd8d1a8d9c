/**
 * Fuzzing the layer applier: a bounded number of generated malformed tars (test/fuzz/tar-gen.ts) through the
 * real walking differ onto real overlayfs and native snapshots (test/fuzz/apply-harness.ts says what each case
 * checks). Seeds that once found a bug are run first, by name. The long run by hand is bench/fuzz.ts.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApplyFuzzer, openFds, tempMounts, type CaseResult } from './apply-harness.js';

/** Cases per CI run (half hostile, half gentle: see tar-gen.ts), from seed FUZZ_SEED (default 1) on. */
const CASES = Number(process.env.FUZZ_CASES ?? 240);
const FIRST_SEED = Number(process.env.FUZZ_SEED ?? 1);
/** Cases onto a tmpfs the differ mounts itself (its third kind of target). */
const TMPFS_CASES = Number(process.env.FUZZ_TMPFS_CASES ?? 30);

let f: ApplyFuzzer;
/** Descriptors once the worker pool's threads exist (the main test sets it after its first cases). */
let fdsBefore: number | undefined;
let fdsAtStart = 0;

beforeAll(async () => {
  f = await ApplyFuzzer.open();
  fdsAtStart = openFds(f.tmp.path).count;
});
afterAll(async () => {
  await f?.close();
});

function report(r: CaseResult): string {
  return `seed ${r.seed}${r.gentle ? ' gentle' : ''} (${r.target}, ${r.outcome}${r.message ? `: ${r.message.slice(0, 200)}` : ''}): ${r.problems.join(' | ')}\n  ${r.summary.join('\n  ')}`;
}

/**
 * Seeds that found bugs (each failed before its fix), with what they found. They are generated, so they hold
 * as long as tar-gen.ts draws the same numbers: a change to the generator must keep these cases as they are.
 */
const REGRESSIONS: [number, string][] = [
  [32, 'a file entry named ".." (the root) with data: the data went to fd -1, an untyped "out of range" error'],
  [57, 'a whiteout with a body: its data went to fd -1'],
  [11, 'a block device of mode 04755: mknod(1) refuses set-id bits in -m, where containerd mknods and applies'],
  [55, 'a fifo of mode 01217: the same'],
  [83, 'a symlink with an empty target: ENOENT from symlink(2) reported as kind unknown'],
  [140, 'a character device with major 416327: mknod EINVAL reported as kind unknown, with mknod\'s text'],
  [279, 'a character device with minor 16777215: the same'],
  [1215, 'a system.posix_acl_access xattr overlayfs does not support: ENOTSUP failed the layer as kind unknown (containerd skips it)'],
];
const GENTLE_REGRESSIONS: [number, string][] = [
  [18, 'a directory owned by uid 2^32+114 (base-256): Node\'s chown threw a RangeError, kind unknown'],
  [70, 'a gid above 2^32: the same'],
  [1208, 'a malformed security.capability value: EINVAL from setxattr as kind unknown, with python\'s text'],
];

describe('malformed layers through the applier', () => {
  it.each(REGRESSIONS)('hostile seed %i, which found a bug, applies or fails cleanly (%s)', async (seed) => {
    const r = await f.run(seed, false);
    expect(r.problems, report(r)).toEqual([]);
  });

  it.each(GENTLE_REGRESSIONS)('gentle seed %i, which found a bug, applies or fails cleanly (%s)', async (seed) => {
    const r = await f.run(seed, true);
    expect(r.problems, report(r)).toEqual([]);
  });

  it(`${CASES} generated cases: no crash, no write outside the target, typed short errors, nothing left behind`, async () => {
    const failures: string[] = [];
    const outcomes = new Map<string, number>();
    for (let i = 0; i < CASES; i++) {
      const r = await f.run(FIRST_SEED + (i >> 1), i % 2 === 1);
      // The worker pool's threads hold a few descriptors each once started: counted after the first cases.
      if (i === 9) fdsBefore = openFds(f.tmp.path).count;
      if (process.env.FUZZ_VERBOSE) process.stdout.write(`${r.seed}${r.gentle ? 'g' : ''} ${r.target} ${r.outcome} ${r.ms}ms ${r.message?.slice(0, 300) ?? ''}\n`);
      const key = `${r.gentle ? 'gentle' : 'hostile'} ${r.outcome}`;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
      if (r.problems.length > 0) failures.push(report(r));
    }
    process.stdout.write(`fuzz apply: ${CASES} cases from seed ${FIRST_SEED}: ${JSON.stringify(Object.fromEntries(outcomes))}\n`);
    expect(failures).toEqual([]);
    // The generator reaches both sides: layers that apply and layers refused, gentle ones mostly applying.
    expect(outcomes.get('hostile invalid argument') ?? 0).toBeGreaterThan(CASES / 10);
    expect(outcomes.get('gentle ok') ?? 0).toBeGreaterThan(CASES / 10);
  }, 600_000);

  it(`${TMPFS_CASES} generated cases onto a tmpfs, which the differ mounts itself: the same, and its mount point unmounted and gone`, async () => {
    const failures: string[] = [];
    const outcomes = new Map<string, number>();
    for (let i = 0; i < TMPFS_CASES; i++) {
      const r = await f.run(FIRST_SEED + (i >> 1), i % 2 === 1, true);
      outcomes.set(r.outcome, (outcomes.get(r.outcome) ?? 0) + 1);
      if (r.problems.length > 0) failures.push(report(r));
    }
    process.stdout.write(`fuzz apply (tmpfs): ${TMPFS_CASES} cases: ${JSON.stringify(Object.fromEntries(outcomes))}\n`);
    expect(failures).toEqual([]);
    expect(outcomes.get('ok') ?? 0).toBeGreaterThan(0);
    expect(readdirSync(join(f.tmp.path, 'mnt'))).toEqual([]);
  }, 600_000);

  it('every snapshot but the base is gone, no mount and no file descriptor is left', async () => {
    expect(await f.snapshotDirs()).toEqual({ overlay: ['1'], native: ['1'] });
    expect(tempMounts(f.tmp.path)).toEqual([]);
    // The content store closes an idle blob handle after a second.
    await new Promise((r) => setTimeout(r, 1500));
    const fds = openFds(f.tmp.path);
    expect(fds.inside.filter((p) => !/\.db(-wal|-shm)?$/.test(p))).toEqual([]);
    expect(fds.count).toBeLessThanOrEqual(fdsBefore !== undefined ? fdsBefore + 5 : fdsAtStart + 15);
  });
});
