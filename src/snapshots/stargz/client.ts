/**
 * The snapshotter's side of lazyfs: finds the root's lazyfs through its socket, or starts one (detached, its
 * own session, stdout/stderr to `<root>/lazyfs.log`: it outlives this process), and sends it requests. A
 * request that finds the connection gone reconnects (starting a new lazyfs if the old one died) once.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { unavailable } from '../../core/errdefs.js';
import type { Logger } from '../../log/index.js';
import { fromReplyError, LOG_NAME, SOCKET_NAME, type HelloResult, type MountRequest, type MountResult, type MountStatus, type Reply, type Request } from './protocol.js';

const defaultEntry = () => fileURLToPath(new URL('./lazyfs-main.js', import.meta.url));

export interface LazyfsClientOptions {
  root: string;
  log: Logger;
  /** The lazyfs entry (default: lazyfs-main.js next to this module, in dist/). */
  entry?: string;
  /** The node binary (default: this process's). */
  node?: string;
  logLevel?: string;
  /** The lazyfs exits after this long with nothing mounted and no snapshotter connected (default 60 s). */
  idleExitMs?: number;
  /** Limit of one Range read of a mounted layer, ms (default 60 s; then the whole-blob fallback). */
  fetchTimeoutMs?: number;
}

export class LazyfsClient {
  private conn: Socket | undefined;
  private connecting: Promise<Socket> | undefined;
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private closed = false;
  /** Whether this client started the lazyfs it talks to (else it found one running). */
  started = false;

  constructor(private readonly opts: LazyfsClientOptions) {}

  private get sock(): string {
    return join(this.opts.root, SOCKET_NAME);
  }

  private tryConnect(): Promise<Socket | undefined> {
    return new Promise((resolve) => {
      const c = connect(this.sock);
      c.once('connect', () => {
        c.removeAllListeners('error');
        resolve(c);
      });
      c.once('error', () => resolve(undefined));
    });
  }

  private spawnLazyfs(): void {
    const logFd = openSync(join(this.opts.root, LOG_NAME), 'a', 0o600);
    try {
      const child = spawn(this.opts.node ?? process.execPath, [this.opts.entry ?? defaultEntry(), '--root', this.opts.root, ...(this.opts.logLevel ? ['--log-level', this.opts.logLevel] : []), ...(this.opts.idleExitMs ? ['--idle-exit-ms', String(this.opts.idleExitMs)] : []), ...(this.opts.fetchTimeoutMs ? ['--fetch-timeout-ms', String(this.opts.fetchTimeoutMs)] : [])], {
        detached: true,
        stdio: ['ignore', logFd, logFd],
        cwd: '/',
      });
      child.on('error', (err) => this.opts.log.error('lazyfs failed to start', { error: err }));
      child.unref();
      this.started = true;
      this.opts.log.info('started lazyfs', { pid: child.pid });
    } finally {
      closeSync(logFd);
    }
  }

  /** The connection: to the running lazyfs, or to one started now (waiting up to 15 s for its socket). */
  private connection(start = true): Promise<Socket> {
    if (this.conn && !this.conn.destroyed) return Promise.resolve(this.conn);
    this.connecting ??= (async () => {
      let c = await this.tryConnect();
      if (!c && !start) throw unavailable('no lazyfs running');
      if (!c) {
        this.spawnLazyfs();
        const deadline = Date.now() + 15_000;
        while (!c && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 50));
          c = await this.tryConnect();
        }
        if (!c) throw unavailable('lazyfs did not start (see lazyfs.log under the snapshotter root)');
      }
      if (this.closed) {
        c.destroy();
        throw unavailable('lazyfs client closed');
      }
      this.attach(c);
      return c;
    })().finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  private attach(c: Socket): void {
    this.conn = c;
    c.unref(); // an idle connection keeps no process alive
    let buf = '';
    c.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let reply: Reply;
        try {
          reply = JSON.parse(line) as Reply;
        } catch {
          continue;
        }
        const w = this.waiting.get(reply.id);
        if (!w) continue;
        this.waiting.delete(reply.id);
        if (this.waiting.size === 0) c.unref();
        if (reply.ok) w.resolve(reply.result);
        else w.reject(fromReplyError(reply.error));
      }
    });
    const fail = () => {
      if (this.conn === c) this.conn = undefined;
      for (const [id, w] of this.waiting) {
        this.waiting.delete(id);
        w.reject(unavailable('lazyfs connection closed'));
      }
    };
    c.on('close', fail);
    c.on('error', fail);
  }

  private async once(req: Request, start = req.op !== 'shutdown'): Promise<unknown> {
    const c = await this.connection(start);
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      c.ref(); // an answer is awaited
      c.write(JSON.stringify({ ...req, id }) + '\n');
    });
  }

  private async call(req: Request): Promise<unknown> {
    if (this.closed) throw unavailable('lazyfs client closed');
    try {
      return await this.once(req);
    } catch (err) {
      if (!(err instanceof Error && err.message.startsWith('lazyfs connection closed'))) throw err;
      if (req.op === 'shutdown') return {};
      // The lazyfs went away mid-request: once more, against a new one if it died.
      return this.once(req);
    }
  }

  /** Whether a lazyfs answers on the socket now (never starts one). */
  async running(): Promise<boolean> {
    if (this.conn && !this.conn.destroyed) return true;
    const c = await this.tryConnect();
    c?.destroy();
    return c !== undefined;
  }

  hello(): Promise<HelloResult> {
    return this.call({ op: 'hello' }) as Promise<HelloResult>;
  }
  mount(req: Omit<MountRequest, 'op'>): Promise<MountResult> {
    return this.call({ op: 'mount', ...req }) as Promise<MountResult>;
  }
  unmount(mountpoint: string, dropCache: boolean): Promise<void> {
    return this.call({ op: 'unmount', mountpoint, dropCache }).then(() => undefined);
  }
  list(): Promise<MountStatus[]> {
    return this.call({ op: 'list' }) as Promise<MountStatus[]>;
  }
  /** Asks the lazyfs to unmount everything and exit (tests, an explicit teardown): not part of a daemon's stop. */
  async shutdown(): Promise<void> {
    if (!this.conn && !(await this.tryConnect().then((c) => (c ? (c.destroy(), true) : false)))) return;
    await this.call({ op: 'shutdown' });
  }

  /**
   * Connects to the root's lazyfs, starting one if none runs, without waiting (a snapshotter that opens: the
   * lazyfs is ready by the time the first remote layer is asked for). The connection is held: a lazyfs with a
   * snapshotter connected does not exit when idle.
   */
  warm(): void {
    if (this.closed) return;
    this.connection(true).then(
      () => undefined,
      (err: unknown) => this.opts.log.warn('lazyfs not started at open; it is started on first use', { error: err }),
    );
  }

  /**
   * Stops the lazyfs this client is connected to if it serves no mount (a snapshotter that closes with no remote
   * layer mounted: nothing needs it). Never starts one; a lazyfs serving mounts keeps serving.
   */
  async shutdownIfIdle(): Promise<boolean> {
    if (this.closed) return false;
    // A lazyfs still starting is waited for a little (one that does not come up is not waited for long).
    if (this.connecting) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.connecting.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, 2_000)))]);
      clearTimeout(timer);
    }
    if (!this.conn || this.conn.destroyed) return false;
    const mounts = (await this.once({ op: 'list' }, false).catch(() => undefined)) as MountStatus[] | undefined;
    if (!mounts || mounts.length > 0) return false;
    await this.once({ op: 'shutdown' }, false).catch(() => undefined);
    return true;
  }

  /** Drops the connection; the lazyfs keeps serving. */
  close(): void {
    this.closed = true;
    this.conn?.destroy();
    this.conn = undefined;
  }
}
