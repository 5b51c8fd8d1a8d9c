/**
 * The Go interop tier's programs: Go sources under test/go/gopath/src/strata.test/interop/<name>, built
 * offline in GOPATH mode against Debian's containerd 1.6.20 sources (/usr/share/gocode) into test/go/bin/
 * (gitignored), and run with arguments and environment.
 *
 * A package with _test.go files is built with `go test -c` (containerd's suites), any other with `go build`.
 * A binary is rebuilt only when a source in its package is newer than it; a lock directory keeps two test
 * files (vitest workers) from building the same binary at once, so a run builds each binary at most once
 * and a rerun with the build cache warm costs nothing. Without Go, goBinary throws (the test FAILS, it is
 * not skipped): install golang-go and golang-github-containerd-containerd-dev (scripts/setup.sh).
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync, rmdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { REPO } from './paths.js';

const execFileP = promisify(execFile);

export const GO_ROOT = join(REPO, 'test', 'go');
export const GO_BIN = join(GO_ROOT, 'bin');
export const GO_SRC = join(GO_ROOT, 'gopath', 'src', 'strata.test', 'interop');
const GOCODE = '/usr/share/gocode';

/** The environment of every go invocation: GOPATH mode, offline, the default build cache. */
export function goEnv(): NodeJS.ProcessEnv {
  return {
    ...process.env,
    GO111MODULE: 'off',
    GOPROXY: 'off',
    GOFLAGS: '',
    GOPATH: `${join(GO_ROOT, 'gopath')}:${GOCODE}`,
  };
}

function findGo(): string {
  for (const p of [...(process.env.PATH ?? '').split(':').map((d) => join(d, 'go')), '/usr/lib/go/bin/go', '/usr/bin/go']) {
    if (p && existsSync(p)) return p;
  }
  throw new Error('Go interop tier: no `go` on PATH. Install Debian\'s golang-go and golang-github-containerd-containerd-dev (bash scripts/setup.sh).');
}

function newestSource(dir: string): number {
  let newest = 0;
  for (const f of readdirSync(dir)) {
    if (f.endsWith('.go')) newest = Math.max(newest, statSync(join(dir, f)).mtimeMs);
  }
  return newest;
}

async function withLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
  mkdirSync(GO_BIN, { recursive: true });
  const lock = join(GO_BIN, `.${name}.lock`);
  const deadline = Date.now() + 10 * 60_000;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch {
      // Another worker is building it. A lock older than the deadline is a leftover from a killed run.
      try {
        if (Date.now() - statSync(lock).mtimeMs > 10 * 60_000) rmdirSync(lock);
      } catch {
        // gone meanwhile
      }
      if (Date.now() > deadline) throw new Error(`Go interop tier: timed out waiting for ${lock}`);
      await sleep(200);
    }
  }
  try {
    return await fn();
  } finally {
    rmdirSync(lock);
  }
}

/** The path of the built program for package `name` (built first if missing or older than its sources). */
export async function goBinary(name: string): Promise<string> {
  const go = findGo();
  if (!existsSync(join(GOCODE, 'src', 'github.com', 'containerd', 'containerd', 'client.go'))) {
    throw new Error(`Go interop tier: containerd's Go sources are missing under ${GOCODE}. Install Debian's golang-github-containerd-containerd-dev (bash scripts/setup.sh).`);
  }
  const pkgDir = join(GO_SRC, name);
  const out = join(GO_BIN, name);
  const isTest = readdirSync(pkgDir).some((f) => f.endsWith('_test.go'));
  const fresh = () => existsSync(out) && statSync(out).mtimeMs >= newestSource(pkgDir);
  if (fresh()) return out;
  return withLock(name, async () => {
    if (fresh()) return out;
    const tmp = `${out}.tmp-${process.pid}`;
    const pkg = `strata.test/interop/${name}`;
    const args = isTest ? ['test', '-c', '-o', tmp, pkg] : ['build', '-o', tmp, pkg];
    try {
      await execFileP(go, args, { env: goEnv(), cwd: REPO, timeout: 10 * 60_000, maxBuffer: 16 << 20 });
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`Go interop tier: go ${args.join(' ')} failed:\n${e.stderr ?? e.message}`);
    }
    renameSync(tmp, out);
    return out;
  });
}

export interface GoResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a built Go program; never rejects on a non-zero exit (the caller asserts on the result). */
export function runGo(
  binary: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {},
): Promise<GoResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env }, cwd: opts.cwd });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    p.on('error', reject);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Results of `go test -test.v` output: top-level and subtest names to PASS / FAIL / SKIP. */
export function goTestResults(stdout: string): Map<string, 'PASS' | 'FAIL' | 'SKIP'> {
  const results = new Map<string, 'PASS' | 'FAIL' | 'SKIP'>();
  for (const m of stdout.matchAll(/^\s*--- (PASS|FAIL|SKIP): (\S+) \(/gm)) {
    results.set(m[2]!, m[1] as 'PASS' | 'FAIL' | 'SKIP');
  }
  return results;
}

/** The lines of `go test -test.v` output that belong to one (sub)test: for failure messages. */
export function goTestOutput(stdout: string, name: string): string {
  const lines = stdout.split('\n');
  const out: string[] = [];
  let inside = false;
  for (const l of lines) {
    const head = /^=== (RUN|CONT|PAUSE)\s+(\S+)/.exec(l);
    if (head) {
      inside = head[2] === name;
      continue;
    }
    if (/^\s*--- (PASS|FAIL|SKIP):/.test(l)) {
      inside = false;
      continue;
    }
    if (inside && !/helpers(_unix)?\.go:\d+: (unmount|[-dlrwx]{10})/.test(l)) out.push(l);
  }
  return out.join('\n').slice(-6000);
}

/** PASS/FAIL lines of the client programs: `PASS name` or `FAIL name: reason`. */
export function checkLines(stdout: string): Map<string, string> {
  const results = new Map<string, string>();
  for (const m of stdout.matchAll(/^(PASS|FAIL) ([^:\n]+)(?::\s*(.*))?$/gm)) {
    results.set(m[2]!.trim(), m[1] === 'PASS' ? 'PASS' : `FAIL: ${m[3] ?? ''}`);
  }
  return results;
}
