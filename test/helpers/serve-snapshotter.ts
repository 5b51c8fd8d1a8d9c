/** A `stratad serve-snapshotter` process for tests: one backend alone on a socket, as a proxy plugin. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { START_TIMEOUT_MS, STRATAD } from './paths.js';

export interface ServedBackend {
  proc: ChildProcess;
  address: string;
  logs(): string;
  stop(): Promise<void>;
}

/** `config`: a config file for the served plugin (`--config`, the daemon's layout). */
export async function serveSnapshotter(snapshotter: string, root: string, address: string, opts: { config?: string } = {}): Promise<ServedBackend> {
  const proc = spawn(
    process.execPath,
    [STRATAD, 'serve-snapshotter', '--snapshotter', snapshotter, '--root', root, '--address', address, '--log-level', 'debug', ...(opts.config ? ['--config', opts.config] : [])],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let logs = '';
  proc.stdout!.on('data', (d: Buffer) => (logs += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!(existsSync(address) && logs.includes('"msg":"serving"'))) {
    if (proc.exitCode !== null) throw new Error(`serve-snapshotter exited with ${proc.exitCode}:\n${logs}`);
    if (Date.now() > deadline) throw new Error(`serve-snapshotter did not start:\n${logs}`);
    await sleep(50);
  }
  return {
    proc,
    address,
    logs: () => logs,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
    },
  };
}
