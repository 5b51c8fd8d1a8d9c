/**
 * The task monitor: one small process per task, `node monitor.js <bundle>`, started by stratad in a session
 * of its own with no stdio tied to stratad, so that it (and the container) outlive a daemon restart or crash.
 *
 * Node cannot make itself a child subreaper (prctl is out of reach), so a container's processes could not be
 * waited for if runc left them behind. The monitor therefore runs runc in the foreground: Start is
 * `runc run --bundle <bundle> <id>` (no --detach) and an exec is `runc exec --process <spec> <id>`; runc
 * stays the parent of the container process, forwards signals to it, reaps it and exits with its status (its
 * exit code, or 128 + the signal), which the monitor records in state.json. Control calls (kill, pause,
 * resume, ps) are short runc commands on the same state root.
 *
 * Consequence for states: containerd's Create leaves a container in runc's "created" state; here a created
 * task is the monitor's own state (bundle prepared, rootfs mounted, nothing in runc) until Start, and its pid
 * is 0 until then.
 *
 * The monitor stays up after its processes exit, until stratad deletes the task (op `shutdown`), so that
 * exit statuses are served from memory and exec records live as long as the task. Protocol and files:
 * bundle.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataError, alreadyExists, failedPrecondition, invalidArgument, notFound, unknown } from '../core/errdefs.js';
import {
  execPidFile,
  execSpecFile,
  files,
  freshState,
  lineReader,
  procOf,
  processStartTime,
  readJson,
  SPARE_FIFO_SUFFIX,
  writeJsonAtomic,
  type ExitNotice,
  type MonitorState,
  type ProcState,
  type Reply,
  type Request,
  type TaskConfig,
} from './bundle.js';
import { ProcessIO, mkfifoAsync, resizeTerminal, withTerminal } from './io.js';
import * as runc from './runc.js';
import { now as nowTime, toRFC3339Nano } from '../core/time.js';

/** The init process's private stdin FIFO is `<bundle>/init-stdin` (an exec's: `exec-<id>-stdin`). */
const INIT_PIPE_BASE = 'init';

interface Running {
  child: ChildProcess;
  io: ProcessIO;
  terminal: boolean;
}

interface Handled {
  result?: unknown;
  /** Runs once the reply has been written (so that, e.g., an exit is never announced before its start). */
  after?: () => void;
}

/** Where log lines go: stderr (the bundle's monitor log when stratad spawned us for a task), or that log once a spare is assigned. */
let logFd = 2;
const log = (msg: string, fields: Record<string, unknown> = {}) => {
  try {
    writeSync(logFd, JSON.stringify({ time: toRFC3339Nano(nowTime()), msg, ...fields }) + '\n');
  } catch {
    // nowhere to log
  }
};

function readPid(path: string): number | undefined {
  try {
    const n = Number.parseInt(readFileSync(path, 'utf8').trim(), 10);
    return Number.isFinite(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

class Monitor {
  state: MonitorState;
  private readonly running = new Map<string, Running>();
  private readonly clients = new Set<Socket>();
  /** Exec ids (or '' for init) whose stdin was closed before the process started. */
  private readonly stdinClosedEarly = new Set<string>();
  private shuttingDown = false;

  constructor(
    readonly bundle: string,
    readonly cfg: TaskConfig,
  ) {
    this.state = readJson<MonitorState>(join(bundle, files.state)) ?? freshState(cfg.io);
  }

  private path(name: string): string {
    return join(this.bundle, name);
  }

  persist(): void {
    writeJsonAtomic(this.path(files.state), this.state);
  }

  private broadcast(msg: ExitNotice): void {
    const line = JSON.stringify(msg) + '\n';
    for (const c of this.clients) c.write(line);
  }

  serve(): void {
    const server = createServer((conn) => this.accept(conn));
    server.on('error', (err) => {
      log('control socket failed', { error: err.message });
      process.exit(1);
    });
    mkdirSync(dirname(this.cfg.socket), { recursive: true });
    try {
      unlinkSync(this.cfg.socket);
    } catch {
      // no stale socket
    }
    const old = process.umask(0o077);
    server.listen(this.cfg.socket, () => {
      chmodSync(this.cfg.socket, 0o600);
      log('monitor ready', { pid: process.pid });
    });
    process.umask(old);
  }

  /** Serves one client; `pending` is what it already sent (a spare's connection: what followed the bundle line). */
  accept(conn: Socket, pending = ''): void {
    this.clients.add(conn);
    conn.on('error', () => undefined);
    conn.on('close', () => this.clients.delete(conn));
    lineReader(conn, (m) => void this.onRequest(conn, m as Request & { id: number }), pending);
  }

  private async onRequest(conn: Socket, req: Request & { id: number }): Promise<void> {
    let reply: Reply;
    let handled: Handled = {};
    try {
      handled = await this.handle(req);
      reply = { id: req.id, ok: true, result: handled.result, state: this.state };
    } catch (err) {
      const e = err instanceof StrataError ? err : unknown(err instanceof Error ? err.message : String(err));
      reply = { id: req.id, ok: false, error: { kind: e.kind, detail: e.detail }, state: this.state };
    }
    const line = JSON.stringify(reply) + '\n';
    if (req.op === 'shutdown' && reply.ok) {
      conn.write(line, () => this.exit());
      setTimeout(() => this.exit(), 1000).unref();
      return;
    }
    if (!conn.destroyed) conn.write(line);
    handled.after?.();
  }

  private proc(execId: string): ProcState {
    const p = procOf(this.state, execId);
    if (!p) throw notFound(`process ${execId} does not exist`);
    return p;
  }

  async handle(req: Request): Promise<Handled> {
    if (this.shuttingDown) throw failedPrecondition('task is being deleted');
    switch (req.op) {
      case 'state':
        return {};
      case 'start':
        return this.start(req.execId);
      case 'exec':
        return this.addExec(req.execId, req.spec, req.io);
      case 'kill':
        return this.kill(req.execId, req.signal, req.all);
      case 'pause':
        return this.pause();
      case 'resume':
        return this.resume();
      case 'pids': {
        const s = this.state.init.status;
        if (s !== 'running' && s !== 'paused') return { result: [] };
        return { result: await runc.ps(this.cfg.runc, this.cfg.id) };
      }
      case 'closeIO': {
        this.proc(req.execId);
        const r = this.running.get(req.execId);
        if (r) r.io.closeStdin();
        else this.stdinClosedEarly.add(req.execId);
        return {};
      }
      case 'resize': {
        if (this.proc(req.execId).status === 'stopped') throw unknown('cannot resize a stopped container');
        const r = this.running.get(req.execId);
        if (r?.terminal && r.child.pid) await resizeTerminal(r.child.pid, req.width, req.height);
        return {};
      }
      case 'deleteExec':
        return this.deleteExec(req.execId);
      case 'ack': {
        const p = procOf(this.state, req.execId);
        if (p?.exitPending) {
          delete p.exitPending;
          this.persist();
        }
        return {};
      }
      case 'shutdown':
        this.shuttingDown = true;
        return {};
      default:
        throw invalidArgument(`unknown monitor request ${(req as { op: string }).op}`);
    }
  }

  private terminalOf(execId: string): boolean {
    const file = execId ? execSpecFile(execId) : files.spec;
    const spec = readJson<Record<string, unknown>>(this.path(file));
    const proc = (execId ? spec : (spec?.process as Record<string, unknown> | undefined)) ?? {};
    return proc.terminal === true;
  }

  private async start(execId: string): Promise<Handled> {
    const p = this.proc(execId);
    if (p.status !== 'created') {
      // State errors are plain errors in containerd's runc shim, so its clients see UNKNOWN (so in pause etc.).
      const word = p.status === 'paused' ? 'paused' : p.status === 'stopped' ? 'stopped' : 'running';
      throw unknown(`cannot start a ${word} process`);
    }
    if (execId && this.state.init.status !== 'running') {
      throw unknown(`cannot start an exec process in a ${this.state.init.status} task`);
    }
    const pidFile = this.path(execId ? execPidFile(execId) : files.initPid);
    rmSync(pidFile, { force: true });
    const terminal = this.terminalOf(execId);
    const io = ProcessIO.open(p.io, this.path(execId ? `exec-${execId}` : INIT_PIPE_BASE));
    const logFile = this.path(files.runcLog);
    const args = execId
      ? runc.execArgs(this.cfg.runc, this.cfg.id, this.path(execSpecFile(execId)), pidFile, logFile)
      : runc.runArgs(this.cfg.runc, this.cfg.id, this.bundle, pidFile, logFile);
    const cmd = terminal ? withTerminal(this.cfg.runc.binary, args) : { cmd: this.cfg.runc.binary, args };
    let child: ChildProcess;
    try {
      child = spawn(cmd.cmd, cmd.args, { cwd: this.bundle, stdio: io.stdio, env: { ...process.env, SHELL: '/bin/sh' } });
    } catch (err) {
      io.close();
      throw unknown(`start ${cmd.cmd}: ${(err as Error).message}`);
    }
    io.afterSpawn();
    if (this.stdinClosedEarly.delete(execId)) io.closeStdin();
    this.running.set(execId, { child, io, terminal });
    let spawnError: string | undefined;
    const exited = new Promise<number>((resolve) => {
      child.once('error', (err) => {
        spawnError = err.message;
        resolve(255);
      });
      child.once('exit', (code, signal) => resolve(runc.exitStatusOf(code, signal)));
    });
    let done = false;
    void exited.then(() => (done = true));
    let pid: number | undefined;
    for (;;) {
      pid = readPid(pidFile);
      if (pid || done) break;
      await sleep(5);
    }
    pid ??= readPid(pidFile);
    if (!pid) {
      const status = await exited;
      io.close();
      this.running.delete(execId);
      p.status = 'stopped';
      p.exitStatus = status;
      p.exitedAt = toRFC3339Nano(nowTime());
      this.persist();
      const why = spawnError ?? (await runc.lastLoggedError(logFile)) ?? `runc exited with status ${status}`;
      throw unknown(`failed to start ${execId ? `exec ${execId}` : 'task'}: ${why}`);
    }
    p.pid = pid;
    p.status = 'running';
    this.persist();
    return { result: { pid }, after: () => void exited.then((status) => this.onExit(execId, status)) };
  }

  private onExit(execId: string, status: number): void {
    const r = this.running.get(execId);
    r?.io.close();
    this.running.delete(execId);
    const p = procOf(this.state, execId);
    if (!p || p.status === 'stopped') return;
    p.status = 'stopped';
    p.exitStatus = status;
    p.exitedAt = toRFC3339Nano(nowTime());
    p.exitPending = true;
    this.persist();
    log('process exited', { execId, status });
    this.broadcast({ event: 'exit', execId, state: this.state });
  }

  private addExec(execId: string, spec: Record<string, unknown>, io: ProcState['io']): Handled {
    if (!execId) throw invalidArgument('exec id must not be empty');
    if (this.state.execs[execId]) throw alreadyExists(`id ${execId}`);
    const s = this.state.init.status;
    if (s !== 'running') throw unknown(`cannot exec in a ${s} state`);
    const procSpec = { ...spec };
    if (io.terminal && procSpec.terminal === undefined) procSpec.terminal = true;
    writeFileSync(this.path(execSpecFile(execId)), JSON.stringify(procSpec), { mode: 0o600 });
    this.state.execs[execId] = { execId, pid: 0, status: 'created', exitStatus: 0, io };
    this.persist();
    return {};
  }

  private async kill(execId: string, signal: number, all: boolean): Promise<Handled> {
    const p = this.proc(execId);
    if (p.status === 'stopped') throw notFound('process already finished');
    if (execId) {
      if (p.status === 'created') throw failedPrecondition('process not created');
      try {
        process.kill(p.pid, signal);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ESRCH') throw notFound('process already finished');
        throw err;
      }
      return {};
    }
    if (p.status === 'created') {
      // Nothing runs yet: the init "dies" of the signal, as a runc-created init would.
      if (signal === 0) return {};
      return { after: () => this.onExit('', 128 + signal) };
    }
    await runc.kill(this.cfg.runc, this.cfg.id, signal, all);
    return {};
  }

  private async pause(): Promise<Handled> {
    const s = this.state.init.status;
    if (s === 'created') throw unknown('cannot pause task in created state');
    if (s === 'paused') throw unknown('cannot pause a paused container');
    if (s === 'stopped') throw unknown('cannot pause a stopped container');
    await runc.pause(this.cfg.runc, this.cfg.id);
    if (this.state.init.status === 'running') {
      this.state.init.status = 'paused';
      this.persist();
    }
    return {};
  }

  private async resume(): Promise<Handled> {
    const s = this.state.init.status;
    if (s === 'created') throw unknown('cannot resume task in created state');
    if (s === 'running') throw unknown('cannot resume a running process');
    if (s === 'stopped') throw unknown('cannot resume a stopped container');
    await runc.resume(this.cfg.runc, this.cfg.id);
    if (this.state.init.status === 'paused') {
      this.state.init.status = 'running';
      this.persist();
    }
    return {};
  }

  private deleteExec(execId: string): Handled {
    if (!execId) throw invalidArgument('exec id must not be empty');
    const p = this.proc(execId);
    if (p.status === 'running' || p.status === 'paused') throw unknown('cannot delete a running process');
    delete this.state.execs[execId];
    this.persist();
    rmSync(this.path(execSpecFile(execId)), { force: true });
    rmSync(this.path(execPidFile(execId)), { force: true });
    return { result: p };
  }

  private exit(): void {
    for (const r of this.running.values()) r.child.kill('SIGKILL');
    try {
      unlinkSync(this.cfg.socket);
    } catch {
      // gone with the bundle
    }
    process.exit(0);
  }
}

function main(): void {
  if (process.argv[2] === '--spare' && process.argv[3]) return spare(process.argv[3]);
  const bundle = process.argv[2];
  if (!bundle) {
    process.stderr.write('usage: monitor <bundle> | monitor --spare <socket>\n');
    process.exit(2);
  }
  monitorTask(bundle);
}

/**
 * A spare: a monitor started before it is needed (Node takes ~70 ms to start, more than the rest of a task
 * create). It listens on `sock` for stratad, which connects at once and later sends one line, the bundle of
 * the task to monitor; it then becomes that task's monitor exactly as if started for it, and that connection
 * becomes stratad's first control connection (stratad sends its first request right after the bundle line,
 * without reconnecting). If stratad goes away first (or never connects), it exits.
 *
 * While it waits, it also makes the FIFO its task's init will read stdin from (`<sock>.fifo`, moved into the
 * bundle on assignment): making a FIFO is a process (mkfifo(1)), better spent here than in Start.
 */
function spare(sock: string): void {
  process.on('SIGHUP', () => undefined);
  process.on('SIGINT', () => undefined);
  const fifo = `${sock}${SPARE_FIFO_SUFFIX}`;
  const leave = () => {
    try {
      unlinkSync(fifo);
    } catch {
      // never made
    }
    process.exit(0);
  };
  mkfifoAsync(fifo);
  // Until assigned, it lives only as long as the stratad that started it: if that one dies before even
  // connecting, this process is re-parented and notices.
  const parent = process.ppid;
  const watch = setInterval(() => {
    if (process.ppid !== parent) leave();
  }, 200);
  const giveUp = setTimeout(leave, 30_000);
  const server = createServer((c) => {
    clearTimeout(giveUp);
    let buf = '';
    c.on('close', leave);
    c.on('error', () => undefined);
    const onData = (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const bundle = buf.slice(0, nl);
      clearInterval(watch);
      c.off('close', leave);
      c.off('data', onData);
      server.close();
      try {
        unlinkSync(sock);
      } catch {
        // already gone
      }
      try {
        logFd = openSync(join(bundle, files.monitorLog), 'a', 0o600);
      } catch {
        // keep logging nowhere useful rather than fail the task
      }
      try {
        renameSync(fifo, join(bundle, `${INIT_PIPE_BASE}-stdin`));
      } catch {
        // not made (yet): Start makes one
      }
      // Synchronously from here to accept(): no data event can fall between the two readers.
      const m = monitorTask(bundle);
      m.accept(c, buf.slice(nl + 1));
    };
    c.on('data', onData);
  });
  server.on('error', (err) => {
    log('spare monitor cannot listen', { sock, error: String(err) });
    process.exit(1);
  });
  server.listen(sock);
}

function monitorTask(bundle: string): Monitor {
  const cfg = readJson<TaskConfig>(join(bundle, files.task));
  if (!cfg) {
    log('no task.json in bundle', { bundle });
    process.exit(2);
  }
  process.on('uncaughtException', (err) => log('uncaught exception', { error: err.stack ?? String(err) }));
  process.on('unhandledRejection', (err) => log('unhandled rejection', { error: String(err) }));
  // Not tied to anything: a hangup or an interrupt aimed at stratad's terminal must not end the task.
  process.on('SIGHUP', () => undefined);
  process.on('SIGINT', () => undefined);
  const m = new Monitor(bundle, cfg);
  m.persist();
  writeJsonAtomic(join(bundle, files.monitor), { pid: process.pid, startTime: processStartTime(process.pid) });
  m.serve();
  return m;
}

main();
