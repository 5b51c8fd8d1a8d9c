/**
 * containerd.services.tasks.v1.Tasks over the task manager (src/runtime/tasks.ts). Translation only:
 * protobuf <-> plain objects, plus the encodings containerd's clients expect inside Any values (cgroup
 * metrics as io.containerd.cgroups.v1/v2.Metrics, exec pids as containerd.runc.v1.ProcessDetails).
 */
import type * as grpc from '@grpc/grpc-js';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import {
  TasksService, type TasksServer,
  type CloseIORequest,
  type CreateTaskRequest,
  type DeleteProcessRequest,
  type DeleteTaskRequest,
  type ExecProcessRequest,
  type GetRequest,
  type KillRequest,
  type ListPidsRequest,
  type MetricsRequest,
  type PauseTaskRequest,
  type ResizePtyRequest,
  type ResumeTaskRequest,
  type StartRequest,
  type WaitRequest,
} from '../gen/containerd/services/tasks/v1/tasks.js';
import type { Any } from '../gen/google/protobuf/any.js';
import { invalidArgument, notImplemented } from '../../core/errdefs.js';
import type { Logger } from '../../log/index.js';
import type { TaskManager } from '../../runtime/tasks.js';
import type { CgroupStats } from '../../runtime/cgroups.js';
import { opContext, unary, unconverted, type GrpcService, grpcService } from '../call.js';
import { parseAll } from '../../filters/index.js';
import { processToPb, exitToPb } from '../convert.js';




/** containerd.runc.v1.ProcessDetails { exec_id = 1 }, what containerd's runc shim attaches to exec pids. */
function processDetails(execId: string): Any {
  return { typeUrl: 'containerd.runc.v1.ProcessDetails', value: Buffer.from(new BinaryWriter().uint32(10).string(execId).finish()) };
}

/** Writes the non-zero uint64 fields of a message (field number -> value). */
function uints(w: BinaryWriter, fields: [number, bigint][]): BinaryWriter {
  for (const [n, v] of fields) if (v !== 0n) w.uint32(n << 3).uint64(v);
  return w;
}

function sub(w: BinaryWriter, field: number, body: (w: BinaryWriter) => void): void {
  w.uint32((field << 3) | 2).fork();
  body(w);
  w.join();
}

/** io.containerd.cgroups.v1.Metrics / io.containerd.cgroups.v2.Metrics, the fields Strata reads. */
export function cgroupMetricsAny(s: CgroupStats): Any {
  const w = new BinaryWriter();
  if (s.version === 1) {
    sub(w, 2, (p) => uints(p, [[1, s.pids.current], [2, s.pids.limit]]));
    sub(w, 3, (c) =>
      sub(c, 1, (u) => {
        uints(u, [[1, s.cpu.total], [2, s.cpu.kernel], [3, s.cpu.user]]);
        if (s.cpu.perCpu.length > 0) {
          u.uint32((4 << 3) | 2).fork();
          for (const v of s.cpu.perCpu) u.uint64(v);
          u.join();
        }
      }),
    );
    sub(w, 4, (m) => {
      uints(m, [[1, s.memory.cache], [2, s.memory.rss], [18, s.memory.totalCache], [19, s.memory.totalRss]]);
      const u = s.memory.usage;
      sub(m, 33, (e) => uints(e, [[1, u.limit], [2, u.usage], [3, u.max], [4, u.failcnt]]));
    });
    return { typeUrl: 'io.containerd.cgroups.v1.Metrics', value: Buffer.from(w.finish()) };
  }
  sub(w, 1, (p) => uints(p, [[1, s.pids.current], [2, s.pids.limit]]));
  const c = s.cpu;
  sub(w, 2, (x) =>
    uints(x, [[1, c.usageUsec], [2, c.userUsec], [3, c.systemUsec], [4, c.nrPeriods], [5, c.nrThrottled], [6, c.throttledUsec]]),
  );
  const m = s.memory;
  sub(w, 4, (x) => uints(x, [[1, m.anon], [2, m.file], [32, m.usage], [33, m.usageLimit], [34, m.swapUsage], [35, m.swapLimit]]));
  return { typeUrl: 'io.containerd.cgroups.v2.Metrics', value: Buffer.from(w.finish()) };
}

function processSpec(spec: Any | undefined): Record<string, unknown> {
  if (!spec?.value || spec.value.length === 0) throw invalidArgument('exec process spec is required');
  try {
    const v = JSON.parse(Buffer.from(spec.value).toString('utf8')) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (err) {
    throw invalidArgument(`exec process spec is not a JSON object: ${(err as Error).message}`);
  }
}

export function tasksService(tasks: TaskManager, log: Logger): GrpcService {
  const l = log.child({ service: 'tasks' });
  const implementation: TasksServer = {
    create: unary(l, 'Create', async (req: CreateTaskRequest, call) => {
      const ctx = opContext(call);
      const { pid } = await tasks.create(ctx, {
        containerId: req.containerId,
        rootfs: req.rootfs.map((m) => ({ type: m.type, source: m.source, ...(m.target ? { target: m.target } : {}), options: m.options })),
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
        terminal: req.terminal,
        checkpoint: !!req.checkpoint?.digest,
      });
      return { containerId: req.containerId, pid };
    }),
    start: unary(l, 'Start', async (req: StartRequest, call) => ({
      pid: await tasks.start(opContext(call), req.containerId, req.execId),
    })),
    // containerd's Delete answer leaves the id empty (DeleteProcess fills it in).
    delete: unary(l, 'Delete', async (req: DeleteTaskRequest, call) => ({ ...exitToPb(await tasks.delete(opContext(call), req.containerId)), id: '' })),
    deleteProcess: unary(l, 'DeleteProcess', async (req: DeleteProcessRequest, call) =>
      exitToPb(await tasks.deleteProcess(opContext(call), req.containerId, req.execId)),
    ),
    get: unary(l, 'Get', (req: GetRequest, call) => ({
      process: processToPb(tasks.get(opContext(call), req.containerId, req.execId)),
    })),
    list: unary(l, 'List', (_req: unknown, call) => ({ tasks: tasks.list(opContext(call)).map(processToPb) })),
    kill: unary(l, 'Kill', async (req: KillRequest, call) => {
      await tasks.kill(opContext(call), req.containerId, req.execId, req.signal, req.all);
      return {};
    }),
    exec: unary(l, 'Exec', async (req: ExecProcessRequest, call) => {
      const ctx = opContext(call);
      // containerd's order: the exec id, then the task, then (in the shim) the process spec.
      if (!req.execId) throw invalidArgument('exec id cannot be empty');
      tasks.get(ctx, req.containerId);
      const io = { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
      await tasks.exec(ctx, req.containerId, req.execId, processSpec(req.spec), io);
      return {};
    }),
    resizePty: unary(l, 'ResizePty', async (req: ResizePtyRequest, call) => {
      await tasks.resizePty(opContext(call), req.containerId, req.execId, req.width, req.height);
      return {};
    }),
    closeIo: unary(l, 'CloseIO', async (req: CloseIORequest, call) => {
      await tasks.closeIO(opContext(call), req.containerId, req.execId, req.stdin);
      return {};
    }),
    pause: unary(l, 'Pause', async (req: PauseTaskRequest, call) => {
      await tasks.pause(opContext(call), req.containerId);
      return {};
    }),
    resume: unary(l, 'Resume', async (req: ResumeTaskRequest, call) => {
      await tasks.resume(opContext(call), req.containerId);
      return {};
    }),
    listPids: unary(l, 'ListPids', async (req: ListPidsRequest, call) => ({
      processes: (await tasks.listPids(opContext(call), req.containerId)).map((p) => ({
        pid: p.pid,
        info: p.execId ? processDetails(p.execId) : undefined,
      })),
    })),
    checkpoint: unary(l, 'Checkpoint', () => {
      throw notImplemented('checkpoint is not supported');
    }),
    update: unary(l, 'Update', () => {
      throw notImplemented('update is not supported');
    }),
    metrics: unary(l, 'Metrics', async (req: MetricsRequest, call) => {
      try {
        parseAll(req.filters);
      } catch (err) {
        throw unconverted(err, ''); // containerd returns the parse error unconverted: UNKNOWN
      }
      const metrics = await tasks.metrics(opContext(call), req.filters);
      return { metrics: metrics.map((m) => ({ timestamp: m.timestamp, id: m.id, data: cgroupMetricsAny(m.stats) })) };
    }),
    wait: unary(l, 'Wait', async (req: WaitRequest, call) => {
      const e = await tasks.wait(opContext(call), req.containerId, req.execId);
      return { exitStatus: e.exitStatus, exitedAt: e.exitedAt };
    }),
  };
  return grpcService<TasksServer>(TasksService, implementation, () => tasks.cancelWaits());
}
