/**
 * The task manager: containerd's tasks service semantics over runc, one monitor process per task
 * (monitor.ts, started by monitor-pool.ts), per namespace. stratad keeps a connection to each monitor and a
 * copy of its state (every message from a monitor carries it), publishes the /tasks/* events, and finds its
 * tasks again after a restart by scanning the bundles. Metrics read the tasks' cgroups (cgroups.ts).
 *
 * States: CREATED (bundle ready, rootfs mounted, monitor up, nothing in runc yet: pid 0), RUNNING, PAUSED,
 * STOPPED (exit status recorded). A task whose monitor died reports STOPPED with the status its monitor
 * recorded, or 255 if it recorded none (containerd's status for a task whose shim is gone).
 */
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  StrataError,
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
  notImplemented,
  unavailable,
} from '../core/errdefs.js';
import { typedEvent, type EventPublisher } from '../events/types.js';
import { adapt, parseAll } from '../filters/index.js';
import type { Logger } from '../log/index.js';
import { validateIdentifier } from '../core/identifiers.js';
import type { OpContext } from '../metadata/context.js';
import { isMountPoint, mountAll, unmount } from '../mount/index.js';
import type { Snapshotter } from '../snapshots/types.js';
import type { Mount } from '../core/mount.js';
import {
  MonitorConnection,
  files,
  monitorAlive,
  procOf,
  readJson,
  socketPathFor,
  writeJsonAtomic,
  type MonitorIdentity,
  type MonitorState,
  type ProcState,
  type ProcStatus,
  type Request,
  type TaskConfig,
} from './bundle.js';
import { cgroupStats, type CgroupStats } from './cgroups.js';
import type { StdioPaths } from './io.js';
import { MonitorPool } from './monitor-pool.js';
import * as runc from './runc.js';
import { now as nowTime, parseRFC3339Nano, toRFC3339Nano } from '../core/time.js';

/** What a task needs from its container record (the containers store's Container has these fields). */
export interface ContainerInfo {
  snapshotter: string;
  snapshotKey: string;
  /** The OCI runtime spec: `value` holds its JSON. */
  spec?: { typeUrl: string; value: Uint8Array } | undefined;
  runtime: { name: string };
}

/** Looks up a container record; throws not found. */
export type ContainerLookup = (ctx: OpContext, id: string) => Promise<ContainerInfo>;

/** The namespaced snapshotter of a name, bound to a context (for a container's rootfs mounts). */
export type SnapshotterLookup = (ctx: OpContext, name: string) => Snapshotter | undefined;

export interface TaskManagerOptions {
  /** Where bundles live: <root>/<namespace>/<id>. */
  root: string;
  /** runc's state root; each namespace gets <runcRoot>/<namespace>. */
  runcRoot: string;
  runc?: string;
  systemdCgroup?: boolean;
  containers: ContainerLookup;
  snapshotters?: SnapshotterLookup;
  events: EventPublisher;
  log: Logger;
  /** The monitor entry (default: monitor.js next to this module, in dist/). */
  monitor?: string;
  /** The node binary for monitors (default: this process's). */
  node?: string;
  /** Keep a spare monitor started ahead of the next create (default true). */
  spareMonitors?: boolean;
}

export interface CreateTaskRequest {
  containerId: string;
  rootfs: Mount[];
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
  /** A checkpoint to restore from (not supported). */
  checkpoint?: boolean;
}

export type TaskStatus = ProcStatus | 'unknown';

export interface ProcessInfo {
  containerId: string;
  /** The exec id, or the container id for the init process (as containerd reports it). */
  id: string;
  pid: number;
  status: TaskStatus;
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
  exitStatus: number;
  exitedAt?: Date;
}

export interface ExitInfo {
  id: string;
  pid: number;
  exitStatus: number;
  exitedAt?: Date;
}

export interface TaskMetrics {
  id: string;
  timestamp: Date;
  stats: CgroupStats;
}

interface Waiter {
  resolve: (p: ProcState) => void;
  reject: (e: Error) => void;
}

class Task {
  conn: MonitorConnection | undefined;
  /** The monitor is gone for good: the state is final. */
  dead = false;
  deleting = false;
  readonly waiters = new Map<string, Waiter[]>();
  /** Exits this stratad has published (so a repeated notice is not published twice). */
  readonly published = new Set<string>();

  constructor(
    readonly cfg: TaskConfig,
    public state: MonitorState,
  ) {}

  get namespace(): string {
    return this.cfg.namespace;
  }
  get id(): string {
    return this.cfg.id;
  }
  get bundle(): string {
    return this.cfg.bundle;
  }
}

const toDate = (s: string | undefined) => (s ? (parseRFC3339Nano(s) ?? new Date(s)) : undefined);

const taskKey = (namespace: string, id: string) => `${namespace}/${id}`;

/** The runtimes whose shims run runc, which Strata stands in for; containerd 1.6 knows them all. */
const RUNC_RUNTIMES = new Set(['io.containerd.runc.v2', 'io.containerd.runc.v1', 'io.containerd.runtime.v1.linux']);

/** Another runtime (runsc, kata, …) is not run on runc instead: as containerd without that shim, UNKNOWN. */
function refuseOtherRuntimes(name: string): void {
  if (RUNC_RUNTIMES.has(name)) return;
  const parts = name.split('.');
  const binary = parts.length === 4 && parts[0] === 'io' && parts[1] === 'containerd' ? `containerd-shim-${parts[2]}-${parts[3]}` : '';
  throw new StrataError(
    'unknown',
    `failed to start shim: failed to resolve runtime path: runtime ${JSON.stringify(name)} binary not installed ${JSON.stringify(binary)}: file does not exist`,
  );
}

export class TaskManager {
  private readonly tasks = new Map<string, Task>();
  private readonly creating = new Set<string>();
  private readonly runcBinary: string;
  private readonly monitors: MonitorPool;
  private closed = false;

  constructor(private readonly opts: TaskManagerOptions) {
    this.runcBinary = opts.runc ?? 'runc';
    this.monitors = new MonitorPool({
      root: opts.root,
      monitor: opts.monitor,
      node: opts.node,
      spare: opts.spareMonitors !== false,
      log: opts.log,
    });
  }

  private runcOptions(namespace: string): runc.RuncOptions {
    return { binary: this.runcBinary, root: join(this.opts.runcRoot, namespace), systemdCgroup: this.opts.systemdCgroup };
  }

  private bundleOf(namespace: string, id: string): string {
    return join(this.opts.root, namespace, id);
  }

  private publish(namespace: string, topic: string, type: string, data: Record<string, unknown>): void {
    try {
      this.opts.events.publish(namespace, topic, typedEvent(`containerd.events.${type}`, data));
    } catch (err) {
      this.opts.log.warn('publish task event', { topic, error: err });
    }
  }

  private task(ctx: OpContext, id: string): Task {
    const t = this.tasks.get(taskKey(ctx.namespace, id));
    if (!t || t.deleting) throw notFound(`task ${id}`);
    return t;
  }

  private proc(t: Task, execId: string): ProcState {
    const p = procOf(t.state, execId);
    if (!p) throw notFound(`process ${execId} does not exist`);
    return p;
  }

  /** A request to a task's monitor; a task whose monitor is gone has only its final state. */
  private async request(t: Task, req: Request) {
    if (!t.conn || t.conn.isClosed) {
      if (req.op === 'kill') throw notFound('process already finished');
      throw failedPrecondition(`task ${t.id} has no running monitor (its state is final)`);
    }
    return t.conn.request(req);
  }

  // ---- lifecycle -------------------------------------------------------------------------------------------

  async create(ctx: OpContext, req: CreateTaskRequest): Promise<{ pid: number; bundle: string }> {
    const id = req.containerId;
    if (!id) throw invalidArgument('container id must not be empty');
    validateIdentifier(id);
    const key = taskKey(ctx.namespace, id);
    if (this.tasks.has(key) || this.creating.has(key)) throw alreadyExists(`task ${id}`);
    if (req.checkpoint) throw notImplemented('restoring a task from a checkpoint is not supported');
    this.creating.add(key);
    const bundle = this.bundleOf(ctx.namespace, id);
    let monitorPid: number | undefined;
    let mounted = false;
    try {
      const container = await this.opts.containers(ctx, id);
      refuseOtherRuntimes(container.runtime?.name ?? '');
      if (!container.spec?.value || container.spec.value.length === 0) throw invalidArgument(`container ${id} has no runtime spec`);
      let spec: Record<string, unknown>;
      try {
        spec = JSON.parse(Buffer.from(container.spec.value).toString('utf8')) as Record<string, unknown>;
      } catch (err) {
        throw invalidArgument(`container ${id}: the runtime spec is not JSON`, err);
      }
      if (existsSync(bundle)) await this.cleanupBundle(bundle); // left by a failed create
      let mounts = req.rootfs;
      if (mounts.length === 0 && container.snapshotKey) {
        const sn = this.opts.snapshotters?.(ctx, container.snapshotter);
        if (!sn) throw invalidArgument(`snapshotter not loaded: ${container.snapshotter}`);
        mounts = await sn.mounts(container.snapshotKey);
      }
      const rootfsDir = join(bundle, files.rootfs);
      mkdirSync(rootfsDir, { recursive: true, mode: 0o711 });
      // The root is what gets mounted on <bundle>/rootfs; with nothing to mount, the spec's own root stands.
      const root = (spec.root as Record<string, unknown> | undefined) ?? {};
      if (mounts.length > 0 || typeof root.path !== 'string' || !root.path) spec.root = { ...root, path: files.rootfs };
      writeFileSync(join(bundle, files.spec), JSON.stringify(spec), { mode: 0o600 });
      const io: StdioPaths = { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
      const cfg: TaskConfig = {
        namespace: ctx.namespace,
        id,
        bundle,
        socket: socketPathFor(this.opts.root, bundle),
        runc: this.runcOptions(ctx.namespace),
        io,
        rootfs: mounts,
        runtime: container.runtime?.name ?? '',
        createdAt: toRFC3339Nano(nowTime()),
      };
      // task.json first: after a crash from here on, a restart knows what to unmount.
      writeJsonAtomic(join(bundle, files.task), cfg);
      mkdirSync(dirname(cfg.socket), { recursive: true, mode: 0o700 });
      // The monitor comes up while the rootfs is mounted: it has nothing to do with the rootfs before Start.
      // (A restart that finds a created task whose rootfs is not mounted takes it for an unfinished create.)
      // The bundle goes to the spare before the mount's process is spawned (a spawn blocks for a few ms).
      const monitorUp = (async () => {
        const started = await this.monitors.start(bundle);
        const child = started.child;
        monitorPid = child.pid;
        const alive = () => child.exitCode === null && child.signalCode === null;
        const conn = started.conn ? MonitorConnection.over(started.conn) : await MonitorConnection.connect(cfg.socket, alive);
        try {
          return { conn, state: (await conn.request({ op: 'state' })).state };
        } catch (err) {
          conn.close();
          throw err;
        }
      })();
      const mountDone = mounts.length > 0 ? mountAll(mounts, rootfsDir).then(() => (mounted = true)) : Promise.resolve();
      const [up, mount] = await Promise.allSettled([monitorUp, mountDone]);
      if (up.status === 'rejected') {
        if (mount.status === 'fulfilled') throw up.reason;
        throw mount.reason; // the mount's error says more
      }
      const { conn, state } = up.value;
      if (mount.status === 'rejected') {
        conn.close();
        throw mount.reason;
      }
      const t = new Task(cfg, state);
      this.attach(t, conn);
      this.tasks.set(key, t);
      this.publish(ctx.namespace, '/tasks/create', 'TaskCreate', {
        containerId: id,
        bundle,
        rootfs: mounts.map((m) => ({ type: m.type, source: m.source, target: m.target ?? '', options: m.options })),
        io,
        checkpoint: '',
        pid: 0,
      });
      return { pid: 0, bundle };
    } catch (err) {
      if (monitorPid) {
        try {
          process.kill(monitorPid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      if (mounted) await unmount(join(bundle, files.rootfs)).catch(() => undefined);
      if (existsSync(bundle)) await this.cleanupBundle(bundle).catch(() => undefined);
      throw err;
    } finally {
      this.creating.delete(key);
    }
  }

  /** Wires a monitor connection to a task: state updates, exits, loss of the monitor. */
  private attach(t: Task, conn: MonitorConnection): void {
    t.conn = conn;
    conn.onState = (s) => {
      t.state = s;
      this.settleWaiters(t);
    };
    conn.onExit = (n) => {
      t.state = n.state;
      this.settleWaiters(t);
      this.publishExits(t);
    };
    conn.onClose = () => {
      if (t.conn === conn) t.conn = undefined;
      if (t.deleting || this.closed) return;
      void this.monitorLost(t);
    };
  }

  private *procs(t: Task): Iterable<ProcState> {
    yield t.state.init;
    yield* Object.values(t.state.execs);
  }

  private settleWaiters(t: Task): void {
    for (const p of this.procs(t)) {
      if (p.status !== 'stopped') continue;
      const ws = t.waiters.get(p.execId);
      if (!ws) continue;
      t.waiters.delete(p.execId);
      for (const w of ws) w.resolve(p);
    }
  }

  /** Publishes /tasks/exit for every exit not yet published, then acknowledges it to the monitor. */
  private publishExits(t: Task): void {
    let wroteState = false;
    for (const p of this.procs(t)) {
      const mark = `${p.execId}@${p.exitedAt ?? ''}`;
      if (p.status !== 'stopped' || !p.exitPending || t.published.has(mark)) continue;
      t.published.add(mark);
      this.publish(t.namespace, '/tasks/exit', 'TaskExit', {
        containerId: t.id,
        id: p.execId || t.id,
        pid: p.pid,
        exitStatus: p.exitStatus,
        exitedAt: toDate(p.exitedAt),
      });
      if (t.conn && !t.conn.isClosed) {
        t.conn.request({ op: 'ack', execId: p.execId }).catch(() => undefined);
      } else {
        delete p.exitPending;
        wroteState = true;
      }
    }
    if (wroteState && existsSync(t.bundle)) writeJsonAtomic(join(t.bundle, files.state), t.state);
  }

  /** The connection to a monitor dropped: reconnect if it lives, else settle its task as stopped. */
  private async monitorLost(t: Task): Promise<void> {
    const ident = readJson<MonitorIdentity>(join(t.bundle, files.monitor));
    if (monitorAlive(t.bundle, ident)) {
      try {
        const conn = await MonitorConnection.connect(t.cfg.socket, () => monitorAlive(t.bundle, ident), 5000);
        this.attach(t, conn);
        const { state } = await conn.request({ op: 'state' });
        t.state = state;
        this.settleWaiters(t);
        this.publishExits(t);
        return;
      } catch (err) {
        this.opts.log.warn('task monitor unreachable', { namespace: t.namespace, id: t.id, error: err });
      }
    }
    this.markDead(t);
  }

  /** The monitor is gone: what it recorded is final; processes it did not see exit get 255. */
  private markDead(t: Task): void {
    t.dead = true;
    t.conn = undefined;
    const recorded = readJson<MonitorState>(join(t.bundle, files.state));
    if (recorded) t.state = recorded;
    const now = toRFC3339Nano(nowTime());
    let changed = false;
    for (const p of this.procs(t)) {
      if (p.status === 'stopped') continue;
      p.status = 'stopped';
      p.exitStatus = 255;
      p.exitedAt = now;
      p.exitPending = true;
      changed = true;
    }
    if (changed && existsSync(t.bundle)) writeJsonAtomic(join(t.bundle, files.state), t.state);
    this.opts.log.warn('task monitor is gone', { namespace: t.namespace, id: t.id });
    this.settleWaiters(t);
    this.publishExits(t);
  }

  /** Finds the tasks of a previous run: reconnects to live monitors, settles the others. */
  async recover(): Promise<void> {
    let namespaces: string[];
    try {
      namespaces = readdirSync(this.opts.root);
    } catch {
      return;
    }
    for (const ns of namespaces) {
      if (ns.startsWith('.')) continue;
      let ids: string[];
      try {
        ids = readdirSync(join(this.opts.root, ns));
      } catch {
        continue;
      }
      for (const id of ids) {
        const bundle = this.bundleOf(ns, id);
        try {
          await this.recoverOne(ns, id, bundle);
        } catch (err) {
          this.opts.log.error('recover task', { namespace: ns, id, error: err });
        }
      }
    }
  }

  private async recoverOne(ns: string, id: string, bundle: string): Promise<void> {
    const cfg = readJson<TaskConfig>(join(bundle, files.task));
    const recorded = readJson<MonitorState>(join(bundle, files.state));
    const ident = readJson<MonitorIdentity>(join(bundle, files.monitor));
    const alive = monitorAlive(bundle, ident);
    // A create that never finished: no task.json, no state and no monitor, or a task never started whose rootfs
    // is not mounted (Create mounts it while the monitor comes up, so a crash can leave a monitor without it).
    const unfinished =
      !cfg ||
      (!recorded && !alive) ||
      (cfg.rootfs.length > 0 && (recorded?.init.status ?? 'created') === 'created' && !(await isMountPoint(join(bundle, files.rootfs))));
    if (unfinished) {
      this.opts.log.info('removing an unfinished task bundle', { namespace: ns, id });
      await this.cleanupBundle(bundle, cfg);
      return;
    }
    const t = new Task(cfg, recorded ?? { init: { execId: '', pid: 0, status: 'created', exitStatus: 0, io: cfg.io }, execs: {} });
    this.tasks.set(taskKey(ns, id), t);
    if (alive) {
      try {
        const conn = await MonitorConnection.connect(cfg.socket, () => monitorAlive(bundle, ident), 5000);
        this.attach(t, conn);
        const { state } = await conn.request({ op: 'state' });
        t.state = state;
        this.opts.log.info('reconnected to task monitor', { namespace: ns, id, pid: ident?.pid });
        this.publishExits(t);
        return;
      } catch (err) {
        this.opts.log.warn('task monitor unreachable', { namespace: ns, id, error: err });
        if (ident && monitorAlive(bundle, ident)) {
          try {
            process.kill(ident.pid, 'SIGKILL');
          } catch {
            // gone
          }
        }
      }
    }
    this.markDead(t);
  }

  /** Unmounts a bundle's rootfs and removes the bundle; never removes a rootfs that is still mounted. */
  private async cleanupBundle(bundle: string, cfg?: TaskConfig): Promise<void> {
    const ident = readJson<MonitorIdentity>(join(bundle, files.monitor));
    if (monitorAlive(bundle, ident)) {
      try {
        process.kill(ident!.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    const rootfs = join(bundle, files.rootfs);
    if (existsSync(rootfs)) {
      await unmount(rootfs);
      if (await isMountPoint(rootfs)) throw new StrataError('unknown', `rootfs ${rootfs} is still mounted`);
    }
    if (cfg?.socket && !cfg.socket.startsWith(bundle + '/')) rmSync(cfg.socket, { force: true });
    await rm(bundle, { recursive: true, force: true });
  }

  async start(ctx: OpContext, id: string, execId = ''): Promise<number> {
    const t = this.task(ctx, id);
    this.proc(t, execId);
    const { result } = await this.request(t, { op: 'start', execId });
    const pid = (result as { pid: number }).pid;
    if (execId) this.publish(t.namespace, '/tasks/exec-started', 'TaskExecStarted', { containerId: id, execId, pid });
    else this.publish(t.namespace, '/tasks/start', 'TaskStart', { containerId: id, pid });
    return pid;
  }

  async delete(ctx: OpContext, id: string): Promise<ExitInfo> {
    const t = this.task(ctx, id);
    const init = t.state.init;
    // Plain errors in containerd's runc shim: UNKNOWN (containerd's Go client checks the state first and
    // answers FAILED_PRECONDITION without calling).
    if (init.status === 'running') throw new StrataError('unknown', 'cannot delete a running process');
    if (init.status === 'paused') throw new StrataError('unknown', 'cannot delete a paused process');
    // An exit the monitor reported in a reply's state but whose notice is still queued: publish it first.
    this.publishExits(t);
    t.deleting = true;
    try {
      const conn = t.conn;
      t.conn = undefined;
      if (conn && !conn.isClosed) {
        const shut = await conn.request({ op: 'shutdown' }).then(
          () => true,
          () => false,
        );
        // The monitor exits once it has answered: its end of the connection closes as it does.
        if (shut) await Promise.race([conn.whenClosed, sleep(1000)]);
        conn.close();
      }
      await this.waitMonitorGone(t);
      // runc removes its state itself when `runc run` ends (the usual case here); it is left only when runc was
      // killed, or never ran the task.
      if (existsSync(join(t.cfg.runc.root, id))) {
        await runc.forceDelete(t.cfg.runc, id).catch((err) => this.opts.log.warn('runc delete', { id, error: err }));
      }
      await this.cleanupBundle(t.bundle, t.cfg);
    } catch (err) {
      t.deleting = false;
      t.dead = true;
      throw err;
    }
    this.tasks.delete(taskKey(t.namespace, id));
    // A task that never started: containerd's shim answers exit status 0 and no exit time.
    if (init.status === 'created') {
      init.status = 'stopped';
      init.exitStatus = 0;
      delete init.exitedAt;
    }
    this.settleWaiters(t);
    // Waits still pending (a task deleted before it started): containerd's lose their shim connection, UNKNOWN.
    for (const ws of t.waiters.values()) for (const w of ws) w.reject(new StrataError('unknown', `task ${id} was deleted`));
    t.waiters.clear();
    const exitedAt = toDate(init.exitedAt);
    this.publish(t.namespace, '/tasks/delete', 'TaskDelete', {
      containerId: id,
      pid: init.pid,
      exitStatus: init.exitStatus,
      exitedAt,
      id: '',
    });
    return { id, pid: init.pid, exitStatus: init.exitStatus, exitedAt };
  }

  /** After a shutdown request: the monitor exits on its own; make sure (SIGKILL after a grace period). */
  private async waitMonitorGone(t: Task): Promise<void> {
    const ident = readJson<MonitorIdentity>(join(t.bundle, files.monitor));
    for (let i = 0; i < 400 && monitorAlive(t.bundle, ident); i++) await sleep(i < 50 ? 2 : 10);
    if (monitorAlive(t.bundle, ident)) {
      try {
        process.kill(ident!.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }

  async deleteProcess(ctx: OpContext, id: string, execId: string): Promise<ExitInfo> {
    if (!execId) throw invalidArgument('exec id must not be empty');
    const t = this.task(ctx, id);
    const p = this.proc(t, execId);
    if (t.dead || !t.conn) {
      if (p.status !== 'stopped') throw new StrataError('unknown', 'cannot delete a running process');
      delete t.state.execs[execId];
      writeJsonAtomic(join(t.bundle, files.state), t.state);
    } else {
      await this.request(t, { op: 'deleteExec', execId });
    }
    const ws = t.waiters.get(execId);
    t.waiters.delete(execId);
    for (const w of ws ?? []) w.resolve(p);
    return { id: execId, pid: p.pid, exitStatus: p.exitStatus, exitedAt: toDate(p.exitedAt) };
  }

  private info(t: Task, p: ProcState): ProcessInfo {
    return {
      containerId: t.id,
      id: p.execId || t.id,
      pid: p.pid,
      status: p.status,
      stdin: p.io.stdin,
      stdout: p.io.stdout,
      stderr: p.io.stderr,
      terminal: p.io.terminal,
      exitStatus: p.exitStatus,
      exitedAt: toDate(p.exitedAt),
    };
  }

  get(ctx: OpContext, id: string, execId = ''): ProcessInfo {
    const t = this.task(ctx, id);
    return this.info(t, this.proc(t, execId));
  }

  list(ctx: OpContext): ProcessInfo[] {
    const out: ProcessInfo[] = [];
    for (const t of this.tasks.values()) {
      if (t.namespace === ctx.namespace && !t.deleting) out.push(this.info(t, t.state.init));
    }
    return out.sort((a, b) => (a.containerId < b.containerId ? -1 : a.containerId > b.containerId ? 1 : 0));
  }

  async kill(ctx: OpContext, id: string, execId: string, signal: number, all: boolean): Promise<void> {
    const t = this.task(ctx, id);
    const p = this.proc(t, execId);
    if (p.status === 'stopped') throw notFound('process already finished');
    await this.request(t, { op: 'kill', execId, signal, all });
  }

  async exec(ctx: OpContext, id: string, execId: string, spec: Record<string, unknown>, io: StdioPaths): Promise<void> {
    if (!execId) throw invalidArgument('exec id must not be empty');
    validateIdentifier(execId);
    const t = this.task(ctx, id);
    await this.request(t, { op: 'exec', execId, spec, io });
    this.publish(t.namespace, '/tasks/exec-added', 'TaskExecAdded', { containerId: id, execId });
  }

  async resizePty(ctx: OpContext, id: string, execId: string, width: number, height: number): Promise<void> {
    const t = this.task(ctx, id);
    this.proc(t, execId);
    await this.request(t, { op: 'resize', execId, width, height });
  }

  async closeIO(ctx: OpContext, id: string, execId: string, stdin: boolean): Promise<void> {
    const t = this.task(ctx, id);
    const p = this.proc(t, execId);
    if (!stdin || p.status === 'stopped') return;
    await this.request(t, { op: 'closeIO', execId });
  }

  async pause(ctx: OpContext, id: string): Promise<void> {
    const t = this.task(ctx, id);
    await this.request(t, { op: 'pause' });
    this.publish(t.namespace, '/tasks/paused', 'TaskPaused', { containerId: id });
  }

  async resume(ctx: OpContext, id: string): Promise<void> {
    const t = this.task(ctx, id);
    await this.request(t, { op: 'resume' });
    this.publish(t.namespace, '/tasks/resumed', 'TaskResumed', { containerId: id });
  }

  /** Every process of the container (host pids), with the exec id of those that are exec processes. */
  async listPids(ctx: OpContext, id: string): Promise<{ pid: number; execId?: string }[]> {
    const t = this.task(ctx, id);
    if (t.dead || !t.conn) return [];
    const { result } = await this.request(t, { op: 'pids' });
    const execByPid = new Map(Object.values(t.state.execs).filter((e) => e.pid > 0).map((e) => [e.pid, e.execId]));
    return (result as number[]).map((pid) => (execByPid.has(pid) ? { pid, execId: execByPid.get(pid) } : { pid }));
  }

  /** Resolves when the process has exited, with its exit status. */
  async wait(ctx: OpContext, id: string, execId = ''): Promise<ExitInfo> {
    const t = this.task(ctx, id);
    let p = this.proc(t, execId);
    if (p.status !== 'stopped') {
      p = await new Promise<ProcState>((resolve, reject) => {
        const ws = t.waiters.get(execId) ?? [];
        ws.push({ resolve, reject });
        t.waiters.set(execId, ws);
      });
    }
    return { id: execId || id, pid: p.pid, exitStatus: p.exitStatus, exitedAt: toDate(p.exitedAt) };
  }

  /** cgroup statistics of the running tasks of a namespace that match the filters (fields: id, namespace, runtime). */
  async metrics(ctx: OpContext, filters: string[]): Promise<TaskMetrics[]> {
    const filter = parseAll(filters);
    const out: TaskMetrics[] = [];
    for (const t of this.tasks.values()) {
      if (t.namespace !== ctx.namespace || t.deleting) continue;
      const init = t.state.init;
      if ((init.status !== 'running' && init.status !== 'paused') || init.pid <= 0) continue;
      const matched = filter.match(
        adapt((path) => {
          if (path.length !== 1) return undefined;
          if (path[0] === 'id') return t.id;
          if (path[0] === 'namespace') return t.namespace;
          if (path[0] === 'runtime') return t.cfg.runtime;
          return undefined;
        }),
      );
      if (!matched) continue;
      try {
        out.push({ id: t.id, timestamp: new Date(), stats: await cgroupStats(init.pid) });
      } catch (err) {
        this.opts.log.debug('task metrics', { id: t.id, error: err });
      }
    }
    return out;
  }

  /** Ends pending waits (the daemon is stopping); monitors and their tasks keep running. */
  cancelWaits(): void {
    for (const t of this.tasks.values()) {
      for (const ws of t.waiters.values()) for (const w of ws) w.reject(unavailable('daemon is shutting down'));
      t.waiters.clear();
    }
  }

  /** Disconnects from every monitor (stratad stops; the tasks do not). */
  close(): void {
    this.closed = true;
    this.monitors.close();
    this.cancelWaits();
    for (const t of this.tasks.values()) t.conn?.close();
  }
}
