/**
 * A task's bundle directory and the conversation between stratad and the task's monitor.
 *
 *   <state>/io.containerd.runtime.v2.task/<namespace>/<id>/
 *     config.json     the OCI runtime spec (from the container record, root.path = "rootfs")
 *     rootfs/         the container's root file system is mounted here
 *     task.json       what the monitor needs (written by stratad before the monitor starts; never changes)
 *     state.json      the processes' states (written by the monitor, atomically, on every change)
 *     monitor.json    the monitor's pid and start time (to find it again after a daemon restart)
 *     monitor.log     the monitor's own output
 *     runc.log        runc's JSON log (errors are reported from it)
 *     init.pid, exec-<id>.pid, exec-<id>.json   runc pid files and exec process specs
 *     monitor.sock    the monitor's control socket (under <state>/.../s/ when the bundle path is too long)
 *
 * The control protocol is newline-delimited JSON on a unix socket the monitor listens on: stratad sends
 * `{id, op, ...}` requests; the monitor answers `{id, ok, result | error, state}` in order and also sends
 * `{event: 'exit', execId, state}` when a process exits. Every message carries the monitor's whole state, so
 * stratad's view is always the monitor's latest. An exit stays "unacknowledged" in state.json until stratad
 * has published it (op `ack`), so exits that happen while stratad is down are published once it is back.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataError, unavailable, type ErrorKind } from '../core/errdefs.js';
import type { Mount } from '../core/mount.js';
import type { StdioPaths } from './io.js';
import type { RuncOptions } from './runc.js';

export const files = {
  spec: 'config.json',
  rootfs: 'rootfs',
  task: 'task.json',
  state: 'state.json',
  monitor: 'monitor.json',
  monitorLog: 'monitor.log',
  runcLog: 'runc.log',
  socket: 'monitor.sock',
  initPid: 'init.pid',
} as const;

export const execPidFile = (execId: string) => `exec-${execId}.pid`;
export const execSpecFile = (execId: string) => `exec-${execId}.json`;

/** What stratad tells the monitor (task.json). */
export interface TaskConfig {
  namespace: string;
  id: string;
  bundle: string;
  socket: string;
  runc: RuncOptions;
  io: StdioPaths;
  /** The mounts stacked on <bundle>/rootfs (Delete unmounts them). */
  rootfs: Mount[];
  /** The container's runtime name (informational: every task runs on runc). */
  runtime: string;
  createdAt: string;
}

export type ProcStatus = 'created' | 'running' | 'paused' | 'stopped';

export interface ProcState {
  /** '' for the init process. */
  execId: string;
  pid: number;
  status: ProcStatus;
  exitStatus: number;
  exitedAt?: string;
  io: StdioPaths;
  /** A stopped process whose exit stratad has not yet published. */
  exitPending?: boolean;
}

export interface MonitorState {
  init: ProcState;
  execs: Record<string, ProcState>;
}

export interface MonitorIdentity {
  pid: number;
  /** Field 22 of /proc/<pid>/stat: tells a reused pid from ours. */
  startTime: string;
}

export type Request =
  | { op: 'state' }
  | { op: 'start'; execId: string }
  | { op: 'exec'; execId: string; spec: Record<string, unknown>; io: StdioPaths }
  | { op: 'kill'; execId: string; signal: number; all: boolean }
  | { op: 'pause' }
  | { op: 'resume' }
  | { op: 'pids' }
  | { op: 'closeIO'; execId: string }
  | { op: 'resize'; execId: string; width: number; height: number }
  | { op: 'deleteExec'; execId: string }
  | { op: 'ack'; execId: string }
  | { op: 'shutdown' };

export interface Reply {
  id: number;
  ok: boolean;
  result?: unknown;
  error?: { kind: ErrorKind; detail: string };
  state: MonitorState;
}

export interface ExitNotice {
  event: 'exit';
  execId: string;
  state: MonitorState;
}

export const freshState = (io: StdioPaths): MonitorState => ({
  init: { execId: '', pid: 0, status: 'created', exitStatus: 0, io },
  execs: {},
});

/** The process an exec id names ('' = init), or undefined. */
export const procOf = (s: MonitorState, execId: string): ProcState | undefined => (execId ? s.execs[execId] : s.init);

/**
 * Writes JSON through a temporary file and a rename, so a reader (stratad after a restart, the monitor) never
 * sees half a file, whichever process stops when. Not fsynced: a bundle is runtime state, like containerd's
 * bundles and shim state (which it writes without fsync either) it describes processes that a machine crash
 * ends anyway, and its directory is normally on tmpfs (/run). A restart after a machine crash finds either the
 * old or the new file, or none (a create that never finished, which recovery removes).
 */
export function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, JSON.stringify(value));
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** A spare monitor's prepared stdin FIFO is `<its socket><this>` until it is assigned a bundle. */
export const SPARE_FIFO_SUFFIX = '.fifo';

export function readJson<T>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

/** unix socket paths are limited to 108 bytes: long bundle paths put the socket under <stateRoot>/s/. */
export function socketPathFor(stateRoot: string, bundle: string): string {
  const inBundle = join(bundle, files.socket);
  if (Buffer.byteLength(inBundle) < 100) return inBundle;
  return join(stateRoot, 's', `${createHash('sha256').update(bundle).digest('hex').slice(0, 32)}.sock`);
}

/** The start time of a live (non-zombie) process, or undefined. */
export function processStartTime(pid: number): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name is in parentheses and may contain anything: fields start after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (rest[0] === 'Z' || rest[0] === 'X') return undefined;
  return rest[19];
}

/** Whether the monitor recorded in a bundle is still running (same pid, same start time, our command line). */
export function monitorAlive(bundle: string, ident: MonitorIdentity | undefined): boolean {
  if (!ident || processStartTime(ident.pid) !== ident.startTime) return false;
  try {
    const cmdline = readFileSync(`/proc/${ident.pid}/cmdline`, 'utf8').split('\0');
    // A spare monitor was started before its task existed (`monitor.js --spare <socket>`); pid and start time
    // (recorded by the monitor itself once assigned) identify it.
    return cmdline.includes(bundle) || cmdline.includes('--spare');
  } catch {
    return false;
  }
}

/** Splits a byte stream into JSON lines; `pending` is what was read from it before (handled at once). */
export function lineReader(sock: Socket, onMessage: (m: unknown) => void, pending = ''): void {
  let buf = '';
  sock.setEncoding('utf8');
  const onData = (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.trim()) continue;
      let msg: unknown;
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      onMessage(msg);
    }
  };
  sock.on('data', onData);
  if (pending) onData(pending);
}

/** stratad's side of one monitor's socket. */
export class MonitorConnection {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();
  private closed = false;
  /** Resolves when the connection has closed (either end). */
  readonly whenClosed: Promise<void>;
  /** Every reply's state, before its request resolves. */
  onState: (s: MonitorState) => void = () => undefined;
  onExit: (n: ExitNotice) => void = () => undefined;
  onClose: () => void = () => undefined;

  private constructor(private readonly sock: Socket) {
    lineReader(sock, (m) => this.dispatch(m as Reply | ExitNotice));
    sock.on('error', () => undefined);
    let onClosed!: () => void;
    this.whenClosed = new Promise((resolve) => (onClosed = resolve));
    sock.on('close', () => {
      onClosed();
      this.closed = true;
      for (const p of this.pending.values()) p.reject(unavailable('task monitor connection closed'));
      this.pending.clear();
      this.onClose();
    });
  }

  /** A connection already open (a spare monitor's, which it serves once assigned). */
  static over(sock: Socket): MonitorConnection {
    sock.ref();
    return new MonitorConnection(sock);
  }

  /** Connects, retrying while the monitor is starting (until `alive()` says it is gone, or the deadline). */
  // The wait ends early when the monitor process dies (alive()); a live monitor that has not opened its socket
  // yet is only slow (a loaded host, an emulated one), so the default wait is generous.
  static async connect(path: string, alive: () => boolean, timeoutMs = 60_000): Promise<MonitorConnection> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path);
          s.once('connect', () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
        return new MonitorConnection(sock);
      } catch (err) {
        if (!alive() || Date.now() > deadline) throw unavailable(`connect to task monitor: ${(err as NodeJS.ErrnoException).code ?? 'failed'}`);
        await sleep(10);
      }
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private dispatch(m: Reply | ExitNotice): void {
    if ('event' in m) {
      // After the replies of this chunk have been handled (their awaiting code runs in microtasks): a start's
      // reply is then always acted on before the exit that follows it.
      setImmediate(() => this.onExit(m));
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (m.state) this.onState(m.state);
    p.resolve(m);
  }

  /** Sends a request; resolves with the reply (an error reply becomes a StrataError of its kind). */
  async request(req: Request): Promise<Reply> {
    if (this.closed) throw unavailable('task monitor connection closed');
    const id = this.nextId++;
    const reply = await new Promise<Reply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.sock.write(JSON.stringify({ id, ...req }) + '\n');
    });
    if (!reply.ok) {
      const e = reply.error ?? { kind: 'unknown' as ErrorKind, detail: 'task monitor failed' };
      throw new StrataError(e.kind, e.detail);
    }
    return reply;
  }

  close(): void {
    this.sock.destroy();
  }
}
