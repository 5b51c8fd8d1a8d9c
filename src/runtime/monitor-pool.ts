/**
 * Starting task monitors (monitor.ts) for the task manager, with one spare monitor kept started ahead of the
 * next create: Node takes 70-100 ms to start, more than the rest of a task create (docs/runtime.md, "The
 * spare monitor").
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect as netConnect, type Socket } from 'node:net';
import { closeSync, mkdirSync, openSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../log/index.js';
import { SPARE_FIFO_SUFFIX, files } from './bundle.js';

export interface MonitorPoolOptions {
  /** The task manager's bundle root (the spares' sockets go next to it). */
  root: string;
  /** The monitor entry (default: monitor.js next to this module, in dist/). */
  monitor?: string;
  /** The node binary for monitors (default: this process's). */
  node?: string;
  /** Keep a spare monitor started ahead of the next create. */
  spare: boolean;
  log: Logger;
}

const defaultMonitor = () => fileURLToPath(new URL('./monitor.js', import.meta.url));

/** A monitor for a task: its process, and for a spare, the connection it serves as its first control client. */
export interface StartedMonitor {
  child: ChildProcess;
  conn?: Socket;
}

interface Spare {
  child: ChildProcess;
  sock: string;
  conn?: Socket;
  /** Resolves with the connection once the spare listens, or undefined if it died or never listened. */
  ready: Promise<Socket | undefined>;
}

export class MonitorPool {
  private readonly monitorPath: string;
  private readonly nodePath: string;
  private closed = false;
  private spareMonitor?: Spare;
  private spareSeq = 0;

  constructor(private readonly opts: MonitorPoolOptions) {
    this.monitorPath = opts.monitor ?? defaultMonitor();
    this.nodePath = opts.node ?? process.execPath;
  }

  /**
   * A monitor process for `bundle` (which holds task.json): the spare if there is one (with the connection it
   * now serves; one still starting is waited for, it is ready sooner than a new process would be), else a new
   * one (to connect to on the bundle's socket).
   */
  async start(bundle: string): Promise<StartedMonitor> {
    const s = this.spareMonitor;
    this.spareMonitor = undefined;
    let taken: StartedMonitor | undefined;
    if (s) {
      const conn = s.conn ?? (await s.ready);
      if (conn && !conn.destroyed && s.child.exitCode === null && s.child.signalCode === null) {
        conn.write(`${bundle}\n`);
        taken = { child: s.child, conn };
      } else {
        this.discard(s);
      }
    }
    // The next spare once the caller's own spawns (the rootfs mount) have started: a spawn blocks for a few ms.
    setImmediate(() => this.startSpare());
    return taken ?? { child: this.spawnMonitor(bundle) };
  }

  /** Stops the spare; start() starts no more. */
  close(): void {
    this.closed = true;
    const s = this.spareMonitor;
    this.spareMonitor = undefined;
    if (s) this.discard(s);
  }

  /** Ends a spare that will not be used, and removes what it made. */
  private discard(s: Spare): void {
    s.conn?.destroy();
    s.child.kill('SIGKILL');
    rmSync(`${s.sock}${SPARE_FIFO_SUFFIX}`, { force: true });
    rmSync(s.sock, { force: true });
  }

  /** Starts a spare monitor and connects to it (it exits if that connection closes before it is used). */
  private startSpare(): void {
    if (this.closed || !this.opts.spare || this.spareMonitor) return;
    // Not under root: its entries are namespaces.
    const dir = join(dirname(this.opts.root), 'strata-spare-monitors');
    const sock = join(dir, `${process.pid}-${++this.spareSeq}.sock`);
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      rmSync(sock, { force: true });
    } catch {
      return;
    }
    const child = spawn(this.nodePath, [this.monitorPath, '--spare', sock], {
      detached: true,
      stdio: 'ignore',
      cwd: '/',
      env: { ...process.env, UV_THREADPOOL_SIZE: '16' },
    });
    child.on('error', () => undefined);
    child.unref();
    let settle!: (c: Socket | undefined) => void;
    const ready = new Promise<Socket | undefined>((resolve) => (settle = resolve));
    const spare: Spare = { child, sock, ready };
    this.spareMonitor = spare;
    child.once('exit', () => settle(undefined));
    const tryConnect = (left: number) => {
      if (child.exitCode !== null || child.signalCode !== null) return settle(undefined);
      const c = netConnect(sock);
      c.once('connect', () => {
        c.removeAllListeners('error');
        c.on('error', () => undefined);
        c.unref();
        spare.conn = c;
        settle(c);
      });
      c.once('error', () => {
        c.destroy();
        if (left > 0) setTimeout(() => tryConnect(left - 1), 5).unref();
        else settle(undefined);
      });
    };
    tryConnect(1000);
  }

  private spawnMonitor(bundle: string): ChildProcess {
    const logFd = openSync(join(bundle, files.monitorLog), 'a', 0o600);
    try {
      const child = spawn(this.nodePath, [this.monitorPath, bundle], {
        detached: true,
        stdio: ['ignore', logFd, logFd],
        cwd: '/',
        // Blocking FIFO opens wait in the thread pool; give them room.
        env: { ...process.env, UV_THREADPOOL_SIZE: '16' },
      });
      child.on('error', (err) => this.opts.log.error('task monitor failed to start', { bundle, error: err }));
      child.unref();
      return child;
    } finally {
      closeSync(logFd);
    }
  }
}
