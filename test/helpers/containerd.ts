/**
 * A real containerd (Debian's 1.6) for interop tests: its own temp root, state and socket, the CRI plugin
 * disabled, ready once `ctr version` answers. stop() kills and removes the tasks it ran, stops the daemon
 * (SIGTERM, SIGKILL after 10 s), kills any shim left over from it (found by its socket path on the shim's
 * command line) with the shim's own children, and unmounts whatever is still mounted under its directory.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RunResult } from './ctr.js';
import { START_TIMEOUT_MS } from './paths.js';
import { tempDir, type TempDir } from './temp.js';

export interface ContainerdOptions {
  /**
   * Extra TOML, placed after the top-level keys and before the helper's own tables: top-level keys stay
   * top-level, and tables (e.g. `[proxy_plugins.x]`) are their own tables.
   */
  config?: string;
  /** Reuse a directory (e.g. one prepared beforehand); by default a new temp dir. */
  dir?: TempDir;
}

export interface StartedContainerd {
  /** containerd's gRPC socket. */
  address: string;
  root: string;
  state: string;
  dir: TempDir;
  proc: ChildProcess;
  configPath: string;
  logs(): string;
  /** Stops everything it started and unmounts what is left under `dir`; the directory itself stays. */
  stop(): Promise<void>;
}

const running = new Set<StartedContainerd>();

/**
 * Runs a command to completion. Unlike ctr.ts's run(), stdin is closed unless `input` is given, and a
 * command that exits before reading its input (EPIPE) is not an uncaught error.
 */
export function exec(
  cmd: string,
  args: string[],
  opts: { input?: string | Buffer; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    p.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    p.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    if (p.stdin) {
      p.stdin.on('error', () => undefined);
      p.stdin.end(opts.input);
    }
  });
}

/** ctr against `address` in `namespace`, through exec(). */
export function ctrAt(address: string, args: string[], namespace = 'default'): Promise<RunResult> {
  return exec('ctr', ['--address', address, '--namespace', namespace, ...args]);
}

/** PATH with the sbin directories, where Debian installs runc. */
function envWithSbin(): NodeJS.ProcessEnv {
  const path = (process.env.PATH ?? '').split(':').filter(Boolean);
  for (const p of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']) {
    if (!path.includes(p)) path.push(p);
  }
  return { ...process.env, PATH: path.join(':') };
}

export async function startContainerd(opts: ContainerdOptions = {}): Promise<StartedContainerd> {
  let dir = opts.dir;
  if (!dir) {
    dir = await tempDir('containerd-');
    ownedDirs.add(dir);
  }
  const root = join(dir.path, 'root');
  const state = join(dir.path, 'state');
  const address = join(dir.path, 'containerd.sock');
  const configPath = join(dir.path, 'containerd.toml');
  await writeFile(
    configPath,
    [
      'version = 2',
      `root = "${root}"`,
      `state = "${state}"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      opts.config ?? '',
      '[grpc]',
      `  address = "${address}"`,
      '[ttrpc]',
      `  address = "${address}.ttrpc"`,
      '[debug]',
      '  level = "debug"',
      // The opt plugin defaults to /opt/containerd: keep it inside the temp dir.
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = "${join(dir.path, 'opt')}"`,
      '',
    ].join('\n'),
  );
  const proc = spawn('containerd', ['--config', configPath], { stdio: ['ignore', 'pipe', 'pipe'], env: envWithSbin() });
  let logs = '';
  proc.stdout!.on('data', (d: Buffer) => (logs += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));

  let stopped: Promise<void> | undefined;
  const c: StartedContainerd = {
    address,
    root,
    state,
    dir,
    proc,
    configPath,
    logs: () => logs,
    stop: () => (stopped ??= stopContainerd(c, exited)),
  };
  running.add(c);

  const deadline = Date.now() + Math.max(30_000, START_TIMEOUT_MS);
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      running.delete(c);
      await unmountUnder(dir.path);
      throw new Error(`containerd exited with ${proc.exitCode ?? proc.signalCode}:\n${logs}`);
    }
    const v = await exec('ctr', ['--address', address, '--timeout', '2s', 'version'], { timeoutMs: 5_000 });
    if (v.code === 0) break;
    if (Date.now() > deadline) {
      await c.stop();
      throw new Error(`containerd did not answer ctr version in time:\n${v.stderr}\n${logs}`);
    }
    await sleep(100);
  }
  return c;
}

async function stopContainerd(c: StartedContainerd, exited: Promise<void>): Promise<void> {
  running.delete(c);
  const alive = () => c.proc.exitCode === null && c.proc.signalCode === null;
  // Tasks first, through containerd, so the shims exit on their own and unmount the rootfs.
  if (alive()) {
    try {
      await killTasks(c.address);
    } catch {
      // best effort: the leftovers are killed below
    }
  }
  if (alive()) {
    c.proc.kill('SIGTERM');
    const killed = await Promise.race([exited.then(() => false), sleep(10_000).then(() => true)]);
    if (killed && alive()) {
      c.proc.kill('SIGKILL');
    }
  }
  await exited;
  const bundles = await taskBundles(c.state);
  if ((await killShims(c.dir.path)).length > 0) {
    // A shim killed outright leaves its socket (under /run/containerd/s) and runc's state for the container
    // (under /run/containerd/runc/<namespace>), both outside the temp dir: a later run of the same id would
    // fail with "container with given ID already exists".
    for (const b of bundles) {
      if (b.socket) await rm(b.socket, { force: true });
      await exec('runc', ['--root', join('/run/containerd/runc', b.namespace), 'delete', '--force', b.id], { env: envWithSbin() }).catch(
        () => undefined,
      );
    }
  }
  await unmountUnder(c.dir.path);
}

/** The task bundles left in this containerd's state: namespace, id and the shim's socket path. */
async function taskBundles(state: string): Promise<{ namespace: string; id: string; socket?: string }[]> {
  const tasks = join(state, 'io.containerd.runtime.v2.task');
  const out: { namespace: string; id: string; socket?: string }[] = [];
  for (const namespace of await readdir(tasks).catch(() => [] as string[])) {
    for (const id of await readdir(join(tasks, namespace)).catch(() => [] as string[])) {
      const addr = await readFile(join(tasks, namespace, id, 'address'), 'utf8').catch(() => '');
      const m = /^unix:\/\/(\/.+)$/.exec(addr.trim());
      out.push({ namespace, id, socket: m?.[1] });
    }
  }
  return out;
}

async function killTasks(address: string): Promise<void> {
  const ns = await ctrAt(address, ['namespaces', 'ls', '-q']);
  if (ns.code !== 0) return;
  for (const namespace of ns.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) {
    const tasks = await ctrAt(address, ['task', 'ls', '-q'], namespace);
    if (tasks.code !== 0) continue;
    for (const id of tasks.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) {
      await ctrAt(address, ['task', 'kill', '--all', '--signal', 'SIGKILL', id], namespace);
      // `task rm -f` kills and waits for a task that is still running.
      await ctrAt(address, ['task', 'rm', '--force', id], namespace);
    }
  }
}

async function readProc(pid: string, file: string): Promise<string | undefined> {
  try {
    return await readFile(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return undefined;
  }
}

/** pid → ppid of every process. */
async function processTable(): Promise<Map<number, number>> {
  const table = new Map<number, number>();
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const stat = await readProc(pid, 'stat');
    if (!stat) continue;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses, so split after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    table.set(Number(pid), ppid);
  }
  return table;
}

/**
 * Kills the containerd-shim-runc-v2 processes whose command line names this containerd's directory (their
 * -address), and every descendant of theirs (the container processes), by pid.
 */
export async function killShims(dirPath: string): Promise<number[]> {
  const shims: number[] = [];
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const cmdline = (await readProc(pid, 'cmdline'))?.split('\0') ?? [];
    if (!cmdline[0]?.includes('containerd-shim')) continue;
    if (cmdline.some((a) => a.startsWith(dirPath))) shims.push(Number(pid));
  }
  if (shims.length === 0) return [];
  const table = await processTable();
  const victims = new Set<number>(shims);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, ppid] of table) {
      if (victims.has(ppid) && !victims.has(pid)) {
        victims.add(pid);
        grew = true;
      }
    }
  }
  for (const pid of victims) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  // Wait (briefly) until they are gone, so their mounts can go too.
  const deadline = Date.now() + 5_000;
  while (Date.now() < deadline && [...victims].some((pid) => isAlive(pid))) await sleep(50);
  return [...victims];
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** /proc/mounts decodes octal escapes (\040 for a space, ...). */
function unescapeMount(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount points at or below `path`, deepest (and latest) first. */
export async function mountsUnder(path: string): Promise<string[]> {
  const prefix = path.endsWith('/') ? path : path + '/';
  const points = (await readFile('/proc/mounts', 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => unescapeMount(l.split(' ')[1] ?? ''))
    .filter((p) => p === path || p.startsWith(prefix));
  return points.reverse().sort((a, b) => b.split('/').length - a.split('/').length);
}

/** Unmounts everything mounted at or below `path` (lazily if a plain umount fails). */
export async function unmountUnder(path: string): Promise<void> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const points = await mountsUnder(path);
    if (points.length === 0) return;
    for (const p of points) {
      const r = await exec('umount', [p]);
      if (r.code !== 0) await exec('umount', ['-l', p]);
    }
  }
}

/** Stops every containerd still running (for afterAll). */
export async function stopAllContainerd(): Promise<void> {
  for (const c of [...running]) {
    await c.stop();
    // The directories this helper created; stop() unmounted what was left under them.
    if (ownedDirs.has(c.dir)) {
      ownedDirs.delete(c.dir);
      if ((await mountsUnder(c.dir.path)).length === 0) await c.dir.cleanup();
    }
  }
}

/** Temp directories startContainerd created (not passed in by the test). */
const ownedDirs = new Set<TempDir>();
