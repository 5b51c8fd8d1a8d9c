/**
 * The long fuzz run, by hand (CI runs a bounded number of the same cases: test/fuzz/*.test.ts). Two parts:
 *
 *   apply  generated malformed layer tars (test/fuzz/tar-gen.ts), alternately hostile and gentle, through the
 *          real walking differ onto real overlayfs and native snapshots in a temp dir, each case checked as
 *          test/fuzz/apply-harness.ts says (typed short errors, nothing outside the target, nothing left);
 *   grpc   random and malformed requests (test/fuzz/grpc-gen.ts) to every method of a real stratad over raw
 *          HTTP/2, round after round, each answer checked (a status, no host path, no JS internals), a normal
 *          call after each method, and the daemon's log checked for error lines at the end.
 *
 * Each part runs until --cases cases (per part) or --minutes minutes (per part), whichever comes first, from
 * --seed on. Every failing case is printed with its seed (and "gentle" for gentle tar cases): rerun one with
 * `--seed S --cases 1` (apply) or check it in a test. Exit status 1 if any case failed.
 *
 *   npm run build && sudo node dist/bench/fuzz.js [--part apply|grpc|both] [--cases N] [--minutes T] [--seed S]
 *                                                  [--gentle-only] [--hostile-only] [--tmpfs] [--verbose]
 *
 * Apply cases go onto the snapshot target their seed draws, one in ten (or all, with --tmpfs) onto a tmpfs the
 * differ mounts itself. A failing case reruns with its seed, its flag and, for a tmpfs one, --tmpfs.
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { GrpcCode } from '../src/core/errdefs.js';
import { startDaemon, stopAll } from '../test/helpers/daemon.js';
import { REPO } from '../test/helpers/paths.js';
import { ApplyFuzzer, type CaseResult } from '../test/fuzz/apply-harness.js';
import { checkOutcome, fuzzBody, fuzzHeaders, generatedMethods, RawGrpc, unexpectedLogLines } from '../test/fuzz/grpc-gen.js';

const { values: opts } = parseArgs({
  options: {
    part: { type: 'string', default: 'both' },
    cases: { type: 'string', default: '100000' },
    minutes: { type: 'string', default: '10' },
    seed: { type: 'string', default: '1' },
    'gentle-only': { type: 'boolean', default: false },
    'hostile-only': { type: 'boolean', default: false },
    verbose: { type: 'boolean', default: false },
    tmpfs: { type: 'boolean', default: false },
  },
});
const maxCases = Number(opts.cases);
const deadlineMs = Number(opts.minutes) * 60_000;
const firstSeed = Number(opts.seed);
let failed = 0;
// Ctrl-C (or SIGTERM) ends the run after the case in progress, with the usual summary and cleanup.
let stopping = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (stopping) process.exit(130);
    stopping = true;
    say(`${sig}: stopping after the case in progress`);
  });
}

function say(s: string): void {
  process.stdout.write(`${s}\n`);
}

function report(r: CaseResult): string {
  return `FAIL seed ${r.seed}${r.gentle ? ' gentle' : ''}${r.target === 'tmpfs-mount' ? ' tmpfs' : ''} (${r.target}, ${r.outcome}${r.message ? `: ${r.message.slice(0, 300)}` : ''}):\n  ${r.problems.join('\n  ')}\n  case: ${r.summary.join(' | ')}`;
}

async function fuzzApply(): Promise<void> {
  const f = await ApplyFuzzer.open();
  const started = Date.now();
  const outcomes = new Map<string, number>();
  let n = 0;
  let slowest = 0;
  try {
    for (let i = 0; !stopping && n < maxCases && Date.now() - started < deadlineMs; i++) {
      const gentle = opts['gentle-only'] ? true : opts['hostile-only'] ? false : i % 2 === 1;
      const seed = opts['gentle-only'] || opts['hostile-only'] ? firstSeed + i : firstSeed + (i >> 1);
      // One case in ten onto a tmpfs the differ mounts itself (its temporary-mount target).
      const r = await f.run(seed, gentle, opts.tmpfs || i % 10 === 9);
      n++;
      slowest = Math.max(slowest, r.ms);
      const key = `${gentle ? 'gentle' : 'hostile'} ${r.outcome}`;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
      if (opts.verbose) say(`${seed}${gentle ? 'g' : ''} ${r.target} ${r.outcome} ${r.ms}ms ${r.message?.slice(0, 200) ?? ''}`);
      if (r.problems.length > 0) {
        failed++;
        say(report(r));
      }
      if (n % 500 === 0) say(`apply: ${n} cases, ${((Date.now() - started) / 1000).toFixed(0)} s, ${failed} failed so far`);
    }
  } finally {
    await f.close();
  }
  const secs = (Date.now() - started) / 1000;
  say(`apply: ${n} cases from seed ${firstSeed} in ${secs.toFixed(0)} s (${(n / secs).toFixed(1)}/s, slowest ${slowest} ms): ${JSON.stringify(Object.fromEntries(outcomes))}`);
}

async function fuzzGrpc(): Promise<void> {
  const methods = await generatedMethods(join(REPO, 'dist', 'src', 'api', 'gen'));
  const d = await startDaemon({ logLevel: 'info', gc: true });
  let raw = await RawGrpc.connect(d.address);
  const started = Date.now();
  const codes = new Map<string, number>();
  let n = 0;
  const version = '/containerd.services.version.v1.Version/Version';
  try {
    // Rounds of 8 cases per method, the seed moving on each round, until the budget is spent.
    for (let round = 0; !stopping && n < maxCases && Date.now() - started < deadlineMs; round++) {
      for (const [mi, m] of methods.entries()) {
        const outs = await Promise.all(
          Array.from({ length: 8 }, async (_, i) => {
            const seed = firstSeed + (round * methods.length + mi) * 8 + i;
            const { what, body } = fuzzBody(seed, m);
            return { seed, what, out: await raw.call(m.path, body, fuzzHeaders(seed)) };
          }),
        );
        for (const { seed, what, out } of outs) {
          n++;
          const key = String(out.code ?? out.failure);
          codes.set(key, (codes.get(key) ?? 0) + 1);
          const problems = checkOutcome(out, [d.dir.path]);
          if (problems.length > 0) {
            failed++;
            say(`FAIL ${m.path} seed ${seed} (${what}): ${problems.join('; ')}`);
          }
        }
        const ok = await raw.call(version, Buffer.alloc(5), {});
        if (ok.code !== GrpcCode.OK) {
          failed++;
          const s0 = firstSeed + (round * methods.length + mi) * 8;
          say(`FAIL after ${m.path} (seeds ${s0}..${s0 + 7}): Version answered ${ok.code ?? ok.failure}`);
          await new Promise((r) => setTimeout(r, 200));
          if (d.proc.exitCode !== null || d.proc.signalCode !== null) throw new Error(`stratad exited:\n${d.logs.slice(-3000)}`);
          raw.close();
          raw = await RawGrpc.connect(d.address);
        }
      }
      if (round % 10 === 9) say(`grpc: ${n} calls, ${((Date.now() - started) / 1000).toFixed(0)} s, ${failed} failed so far`);
    }
    for (const l of unexpectedLogLines(d.logs, [d.dir.path])) {
      failed++;
      say(`FAIL daemon log: ${l}`);
    }
  } finally {
    raw.close();
    await stopAll();
  }
  const secs = (Date.now() - started) / 1000;
  say(`grpc: ${methods.length} methods, ${n} calls from seed ${firstSeed} in ${secs.toFixed(0)} s: codes ${JSON.stringify(Object.fromEntries(codes))}`);
}

if (opts.part === 'apply' || opts.part === 'both') await fuzzApply();
if (!stopping && (opts.part === 'grpc' || opts.part === 'both')) await fuzzGrpc();
say(failed === 0 ? 'no failures' : `${failed} failures`);
process.exit(failed === 0 ? 0 : 1);
