/**
 * A real stratad for tests: started from the compiled build on a temp root, state dir and socket, with
 * helpers to connect, restart, and kill it the hard way. Every started daemon is stopped by stopAll() (the
 * test files call it in afterAll) so no process or socket outlives the run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataClient } from '../../src/api/clients/strata.js';
import { START_TIMEOUT_MS, STRATAD } from './paths.js';
import { tempDir, type TempDir } from './temp.js';

export interface DaemonOptions {
  /** Extra TOML for the top level of the generated config (root/state/address are set by the helper). */
  config?: string;
  /** Extra lines inside the [grpc] table (e.g. "gid = 4242"). */
  grpc?: string;
  /** Reuse an existing root/state (for restarts). */
  dir?: TempDir;
  logLevel?: string;
  /**
   * Load the GC scheduler (default: disabled). Most tests create objects nothing references (a content
   * ingest without a lease, snapshots of the snapshot suite) and then use them; with the scheduler on, any
   * deletion makes a collection due and it would remove them, as containerd's would. GC tests opt in.
   */
  gc?: boolean;
  /** Return (instead of failing) when the daemon dies before it serves (e.g. at a crash point of its start). */
  allowExit?: boolean;
  /** Extra environment variables for the daemon (on top of the test process's own), e.g. STRATA_CRASH_AT. */
  env?: Record<string, string>;
  /** A command prefix that execs the daemon, e.g. ['ip', 'netns', 'exec', NAME] to run it in a network namespace. */
  exec?: string[];
}

const running = new Set<StartedDaemon>();

export class StartedDaemon {
  logs = '';
  private exited: Promise<number | null>;

  constructor(
    readonly dir: TempDir,
    readonly proc: ChildProcess,
    private readonly options: DaemonOptions,
  ) {
    proc.stdout?.on('data', (d: Buffer) => (this.logs += d.toString()));
    proc.stderr?.on('data', (d: Buffer) => (this.logs += d.toString()));
    this.exited = new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
  }

  get root(): string {
    return join(this.dir.path, 'root');
  }
  get state(): string {
    return join(this.dir.path, 'state');
  }
  get address(): string {
    return join(this.dir.path, 'state', 'strata.sock');
  }
  get configPath(): string {
    return join(this.dir.path, 'config.toml');
  }

  client(namespace = 'default', lease?: string): StrataClient {
    return new StrataClient(this.address, { namespace, lease });
  }

  /** SIGTERM and wait; returns the exit code. */
  async stop(): Promise<number | null> {
    running.delete(this);
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGTERM');
    return this.exited;
  }

  /** SIGKILL: no cleanup at all, as in a crash. */
  async kill9(): Promise<void> {
    running.delete(this);
    this.proc.kill('SIGKILL');
    await this.exited;
  }

  /** Starts a new daemon on the same root, state and socket (`changes` replace options, e.g. another env). */
  restart(changes: Partial<DaemonOptions> = {}): Promise<StartedDaemon> {
    return startDaemon({ ...this.options, ...changes, dir: this.dir });
  }

  waitExit(): Promise<number | null> {
    return this.exited;
  }
}

export async function startDaemon(options: DaemonOptions = {}): Promise<StartedDaemon> {
  let dir = options.dir;
  if (!dir) {
    dir = await tempDir('stratad-');
    ownedDirs.add(dir);
  }
  const root = join(dir.path, 'root');
  const state = join(dir.path, 'state');
  const address = join(state, 'strata.sock');
  const configPath = join(dir.path, 'config.toml');
  const noGc = !options.gc && !(options.config ?? '').includes('disabled_plugins') ? 'disabled_plugins = ["io.containerd.gc.v1.scheduler"]\n' : '';
  await writeFile(
    configPath,
    // The test's own TOML goes before the [grpc] table so its top-level keys stay top-level.
    `version = 2\nroot = "${root}"\nstate = "${state}"\n${noGc}${options.config ?? ''}\n[grpc]\naddress = "${address}"\n${options.grpc ?? ''}\n`,
  );
  const argv = [process.execPath, STRATAD, '--config', configPath, '--log-level', options.logLevel ?? 'debug'];
  const [cmd, ...args] = [...(options.exec ?? []), ...argv] as [string, ...string[]];
  // The prefix execs (ip netns exec does), so the child's pid is the daemon's and signals reach it.
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(options.env ? { env: { ...process.env, ...options.env } } : {}) });
  const d = new StartedDaemon(dir, proc, options);
  running.add(d);
  await waitReady(d, options.allowExit ?? false);
  return d;
}

async function waitReady(d: StartedDaemon, allowExit: boolean): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (d.proc.exitCode !== null || d.proc.signalCode !== null) {
      if (allowExit) return;
      throw new Error(`stratad exited with ${d.proc.exitCode ?? d.proc.signalCode}:\n${d.logs}`);
    }
    if (existsSync(d.address) && d.logs.includes('"msg":"serving","address"')) return;
    await sleep(50);
  }
  throw new Error(`stratad did not start in time:\n${d.logs}`);
}

/** Stops every daemon still running (their directories are the test's to remove). */
export async function stopAll(): Promise<void> {
  for (const d of [...running]) {
    await d.stop();
  }
  // Then the directories startDaemon created (restarts reuse them, so only now): never through a mount point.
  for (const dir of [...ownedDirs]) {
    ownedDirs.delete(dir);
    const mounts = (await readFile('/proc/mounts', 'utf8')).split('\n').map((l) => l.split(' ')[1] ?? '');
    if (mounts.some((m) => m === dir.path || m.startsWith(`${dir.path}/`))) {
      process.stderr.write(`stopAll: ${dir.path} still has mounts; left in place\n`);
      continue;
    }
    await dir.cleanup();
  }
}

/** Temp directories startDaemon created (not passed in by the test). */
const ownedDirs = new Set<TempDir>();
