/**
 * strata task (tasks, t): ls, start, kill, ps, pause, resume, exec, rm, metrics — ctr's `task` commands over
 * the tasks API. `start` and `exec` attach our stdio through FIFOs and wait, as ctr's do (see src/cli/run.ts);
 * listings are laid out as ctr lays them out.
 */
import { constants as osConstants } from 'node:os';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import type { StrataClient } from '../api/clients/strata.js';
import type { Container as PbContainer } from '../api/gen/containerd/services/containers/v1/containers.js';
import { Status } from '../api/gen/containerd/types/task/task.js';
import { execProcess, PROCESS_TYPE_URL, resolveUser, type OciProcess, type OciSpec } from '../runtime/spec.js';
import { bool, CliError, str, type Group } from './command.js';
import { isoOrNull, printJson, printLines, rfc3339, tabwrite, write } from './output.js';
import { containerMounts, NULL_IO, openFifoIO, runTaskOf, startAndWait, STOP_SIGNAL_LABEL } from './run.js';

/** ctr's names of the task states (gogo enum String()). */
export function statusName(s: Status): string {
  switch (s) {
    case Status.CREATED:
      return 'CREATED';
    case Status.RUNNING:
      return 'RUNNING';
    case Status.STOPPED:
      return 'STOPPED';
    case Status.PAUSED:
      return 'PAUSED';
    case Status.PAUSING:
      return 'PAUSING';
    default:
      return 'UNKNOWN';
  }
}

/** A signal by name ("SIGTERM", "term", "KILL") or number, as containerd's signal.ParseSignal. */
export function parseSignal(s: string): number {
  if (/^\d+$/.test(s)) {
    const n = Number(s);
    if (n < 1 || n > 64) throw new CliError(`invalid signal ${s}`);
    return n;
  }
  const name = s.toUpperCase().startsWith('SIG') ? s.toUpperCase() : `SIG${s.toUpperCase()}`;
  const n = (osConstants.signals as Record<string, number | undefined>)[name];
  if (n === undefined) throw new CliError(`unknown signal ${JSON.stringify(s)}`);
  return n;
}

export async function loadContainer(c: StrataClient, id: string): Promise<PbContainer> {
  const { container } = await c.call(c.containers, c.containers.get, { id });
  if (!container) throw new CliError(`container ${id}: empty answer`);
  return container;
}

/** The OCI spec of a container record (JSON bytes in an Any). */
export function specOf(container: PbContainer): OciSpec {
  if (!container.spec?.value?.length) throw new CliError(`container ${container.id} has no spec`);
  try {
    return JSON.parse(Buffer.from(container.spec.value).toString('utf8')) as OciSpec;
  } catch (err) {
    throw new CliError(`container ${container.id}: spec ${container.spec.typeUrl} is not JSON: ${(err as Error).message}`);
  }
}

/** A protobuf message's fields by number: varints as bigints, length-delimited values as bytes. */
function fields(buf: Uint8Array): Map<number, (bigint | Uint8Array)[]> {
  const out = new Map<number, (bigint | Uint8Array)[]>();
  const r = new BinaryReader(buf);
  while (r.pos < r.len) {
    const [no, type] = r.tag();
    let v: bigint | Uint8Array | undefined;
    if (type === WireType.Varint) v = BigInt(r.uint64());
    else if (type === WireType.LengthDelimited) v = r.bytes();
    else r.skip(type, no);
    if (v !== undefined) out.set(no, [...(out.get(no) ?? []), v]);
  }
  return out;
}

const EMPTY = new Uint8Array(0);
const msg = (f: Map<number, (bigint | Uint8Array)[]>, no: number) => {
  const v = f.get(no)?.at(-1);
  return v instanceof Uint8Array ? fields(v) : undefined;
};
const num = (f: Map<number, (bigint | Uint8Array)[]> | undefined, no: number): string => {
  const v = f?.get(no)?.at(-1);
  return typeof v === 'bigint' ? v.toString() : '0';
};
/** A packed (or unpacked) repeated uint64, printed as Go prints a slice: "[1 2 3]". */
function uintList(f: Map<number, (bigint | Uint8Array)[]> | undefined, no: number): string {
  const out: string[] = [];
  for (const v of f?.get(no) ?? []) {
    if (typeof v === 'bigint') out.push(v.toString());
    else {
      const r = new BinaryReader(v ?? EMPTY);
      while (r.pos < r.len) out.push(BigInt(r.uint64()).toString());
    }
  }
  return `[${out.join(' ')}]`;
}

/** ctr's metric rows of io.containerd.cgroups.v1.Metrics and v2.Metrics (the fields ctr prints). */
export function cgroupMetricRows(typeUrl: string, value: Uint8Array): [string, string][] | undefined {
  const m = fields(value);
  const rows: [string, string][] = [];
  if (typeUrl.endsWith('io.containerd.cgroups.v1.Metrics')) {
    const memory = msg(m, 4);
    if (memory) {
      const usage = msg(memory, 33);
      rows.push(['memory.usage_in_bytes', num(usage, 2)], ['memory.limit_in_bytes', num(usage, 1)], ['memory.stat.cache', num(memory, 18)]);
    }
    const cpu = msg(m, 3);
    if (cpu) {
      const usage = msg(cpu, 1);
      rows.push(['cpuacct.usage', num(usage, 1)], ['cpuacct.usage_percpu', uintList(usage, 4)]);
    }
    const pids = msg(m, 2);
    if (pids) rows.push(['pids.current', num(pids, 1)], ['pids.limit', num(pids, 2)]);
    return rows;
  }
  if (typeUrl.endsWith('io.containerd.cgroups.v2.Metrics')) {
    const pids = msg(m, 1);
    if (pids) rows.push(['pids.current', num(pids, 1)], ['pids.limit', num(pids, 2)]);
    const cpu = msg(m, 2);
    if (cpu) {
      const names = ['usage_usec', 'user_usec', 'system_usec', 'nr_periods', 'nr_throttled', 'throttled_usec'];
      names.forEach((n, i) => rows.push([`cpu.${n}`, num(cpu, i + 1)]));
    }
    const memory = msg(m, 4);
    if (memory) {
      rows.push(
        ['memory.usage', num(memory, 32)],
        ['memory.usage_limit', num(memory, 33)],
        ['memory.swap_usage', num(memory, 34)],
        ['memory.swap_limit', num(memory, 35)],
      );
    }
    return rows;
  }
  return undefined;
}

const requireId = (args: string[]): string => {
  const id = args[0];
  if (!id) throw new CliError('container id must be provided');
  return id;
};

export const tasks: Group = {
  name: 'tasks',
  aliases: ['task', 't'],
  summary: 'manage tasks',
  commands: [
    {
      name: 'ls',
      aliases: ['list'],
      summary: 'list tasks',
      options: { quiet: { type: 'boolean', short: 'q' } },
      async run({ values, session }) {
        const c = await session.connect();
        const { tasks: list } = await c.call(c.tasks, c.tasks.list, { filter: '' });
        if (session.json) {
          return printJson(
            list.map((t) => ({ id: t.id, pid: t.pid, status: statusName(t.status), exitStatus: t.exitStatus, exitedAt: isoOrNull(t.exitedAt) })),
          );
        }
        if (bool(values, 'quiet')) return printLines(list.map((t) => t.id));
        // ctr: tabwriter(4, 8, 4, ' '), a header with a trailing tab, rows without.
        const text = ['TASK\tPID\tSTATUS\t', ...list.map((t) => `${t.id}\t${t.pid}\t${statusName(t.status)}`)].join('\n') + '\n';
        await write(tabwrite(text, { minwidth: 4, tabwidth: 8, padding: 4 }));
      },
    },
    {
      name: 'start',
      usage: '<container>',
      summary: "start a container's task and wait for it (-d: return once started)",
      options: { detach: { type: 'boolean', short: 'd' }, 'null-io': { type: 'boolean' } },
      async run({ args, values, session }) {
        const id = requireId(args);
        const c = await session.connect();
        const container = await loadContainer(c, id);
        const spec = specOf(container);
        const terminal = spec.process?.terminal === true;
        if (terminal && bool(values, 'null-io')) throw new CliError('tty and null-io cannot be used together');
        const rootfs = await containerMounts(c, container.snapshotter, container.snapshotKey);
        return runTaskOf(c, { containerId: id, rootfs, terminal, detach: bool(values, 'detach'), nullIO: bool(values, 'null-io') });
      },
    },
    {
      name: 'kill',
      usage: '[-s <signal>] [--all | --exec-id <id>] <container>',
      summary: "signal a container's task (default: the image's stop signal, else SIGTERM)",
      options: { signal: { type: 'string', short: 's' }, all: { type: 'boolean', short: 'a' }, 'exec-id': { type: 'string' } },
      async run({ args, values, session }) {
        const id = requireId(args);
        const all = bool(values, 'all');
        const execId = str(values, 'exec-id') ?? '';
        if (all && execId) throw new CliError('specify an exec-id or all; not both');
        const c = await session.connect();
        const container = await loadContainer(c, id);
        const s = str(values, 'signal');
        const signal = parseSignal(s ?? container.labels[STOP_SIGNAL_LABEL] ?? 'SIGTERM');
        await c.call(c.tasks, c.tasks.kill, { containerId: id, execId, signal, all });
      },
    },
    {
      name: 'ps',
      usage: '<container>',
      summary: "list the processes of a container's task",
      async run({ args, session }) {
        const id = requireId(args);
        const c = await session.connect();
        const { processes } = await c.call(c.tasks, c.tasks.listPids, { containerId: id });
        if (session.json) return printJson(processes.map((p) => ({ pid: p.pid, info: p.info ? p.info.typeUrl : null })));
        const text = ['PID\tINFO', ...processes.map((p) => `${p.pid}\t${p.info ? p.info.typeUrl : '-'}`)].join('\n') + '\n';
        await write(tabwrite(text, { minwidth: 1, tabwidth: 8, padding: 4 }));
      },
    },
    {
      name: 'pause',
      usage: '<container>',
      summary: "pause a container's task",
      async run({ args, session }) {
        const c = await session.connect();
        await c.call(c.tasks, c.tasks.pause, { containerId: requireId(args) });
      },
    },
    {
      name: 'resume',
      usage: '<container>',
      summary: "resume a paused container's task",
      async run({ args, session }) {
        const c = await session.connect();
        await c.call(c.tasks, c.tasks.resume, { containerId: requireId(args) });
      },
    },
    {
      name: 'exec',
      usage: '--exec-id <id> [-t] [-d] [--cwd <dir>] [--user <user>] <container> <arg>...',
      argsAfter: 1,
      summary: "run another process in a container's task",
      options: {
        'exec-id': { type: 'string' },
        tty: { type: 'boolean', short: 't' },
        detach: { type: 'boolean', short: 'd' },
        cwd: { type: 'string' },
        user: { type: 'string' },
        env: { type: 'string', multiple: true },
      },
      async run({ args, values, session }) {
        const [id, ...cmd] = args;
        const execId = str(values, 'exec-id');
        if (!execId) throw new CliError('--exec-id is required');
        if (!id) throw new CliError('container id must be provided');
        if (cmd.length === 0) throw new CliError('a command must be provided');
        const terminal = bool(values, 'tty');
        const detach = bool(values, 'detach');
        const c = await session.connect();
        const container = await loadContainer(c, id);
        const base = specOf(container).process;
        if (!base) throw new CliError(`container ${id}: its spec has no process`);
        const envRaw = (values as Record<string, unknown>)['env'];
        const env = Array.isArray(envRaw) ? (envRaw as string[]) : [];
        const proc: OciProcess = execProcess(base, cmd, { terminal, cwd: str(values, 'cwd'), env });
        const user = str(values, 'user');
        // Numeric users only here: names would need the rootfs's /etc/passwd (use `uid[:gid]`).
        if (user !== undefined) proc.user = resolveUser(user);
        const io = detach ? NULL_IO : await openFifoIO(`${id}-${execId}`, terminal);
        try {
          await c.call(c.tasks, c.tasks.exec, {
            containerId: id,
            execId,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            terminal,
            spec: { typeUrl: PROCESS_TYPE_URL, value: Buffer.from(JSON.stringify(proc)) },
          });
          const start = async () => {
            await c.call(c.tasks, c.tasks.start, { containerId: id, execId });
          };
          if (detach) {
            await start();
            return 0;
          }
          try {
            return await startAndWait(c, { containerId: id, execId, io, terminal, start });
          } finally {
            await c.call(c.tasks, c.tasks.deleteProcess, { containerId: id, execId }).catch(() => undefined);
          }
        } finally {
          await io.close();
        }
      },
    },
    {
      name: 'rm',
      aliases: ['delete', 'del', 'remove'],
      usage: '[-f] [--exec-id <id>] <container>...',
      summary: 'delete stopped tasks (-f: kill them first)',
      options: { force: { type: 'boolean', short: 'f' }, 'exec-id': { type: 'string' } },
      async run({ args, values, session }) {
        if (args.length === 0) throw new CliError('container id must be provided');
        const c = await session.connect();
        const force = bool(values, 'force');
        const execId = str(values, 'exec-id');
        const killAndWait = async (containerId: string, eid: string) => {
          const { process: p } = await c.call(c.tasks, c.tasks.get, { containerId, execId: eid });
          if (p && p.status !== Status.STOPPED) {
            const waiting = c.call(c.tasks, c.tasks.wait, { containerId, execId: eid });
            waiting.catch(() => undefined);
            await c.call(c.tasks, c.tasks.kill, { containerId, execId: eid, signal: osConstants.signals.SIGKILL, all: false });
            await waiting;
          }
        };
        if (execId) {
          const id = args[0]!;
          if (force) await killAndWait(id, execId);
          const r = await c.call(c.tasks, c.tasks.deleteProcess, { containerId: id, execId });
          return r.exitStatus === 0 ? 0 : r.exitStatus;
        }
        let status = 0;
        for (const id of args) {
          try {
            if (force) await killAndWait(id, '');
            const r = await c.call(c.tasks, c.tasks.delete, { containerId: id });
            if (r.exitStatus !== 0) process.stderr.write(`strata: task ${id} exit with non-zero exit code ${r.exitStatus}\n`);
          } catch (err) {
            process.stderr.write(`strata: unable to delete ${id}: ${(err as Error).message}\n`);
            status = 1;
          }
        }
        return status;
      },
    },
    {
      name: 'metrics',
      aliases: ['metric'],
      usage: '[--format table|json] <container>',
      summary: "a data point of a container's task cgroup metrics (the values ctr prints)",
      options: { format: { type: 'string' } },
      async run({ args, values, session }) {
        const id = requireId(args);
        const format = str(values, 'format') ?? (session.json ? 'json' : 'table');
        if (format !== 'table' && format !== 'json') throw new CliError('format must be table or json');
        const c = await session.connect();
        const { metrics } = await c.call(c.tasks, c.tasks.metrics, { filters: [`id==${id}`] });
        const m = metrics.find((x) => x.id === id);
        if (!m?.data) throw new CliError(`no metrics for task ${id}`);
        const rows = cgroupMetricRows(m.data.typeUrl, m.data.value);
        if (!rows) throw new CliError(`cannot read metric data of type ${m.data.typeUrl}`);
        const timestamp = m.timestamp ? rfc3339(m.timestamp) : '';
        if (format === 'json') {
          return printJson({ id: m.id, timestamp: isoOrNull(m.timestamp), type: m.data.typeUrl, metrics: Object.fromEntries(rows) });
        }
        // ctr: tabwriter(1, 8, 4, ' '), every cell terminated.
        const text = [`ID\tTIMESTAMP\t`, `${m.id}\t${timestamp}\t`, '', 'METRIC\tVALUE\t', ...rows.map(([k, v]) => `${k}\t${v}\t`)].join('\n') + '\n';
        await write(tabwrite(text, { minwidth: 1, tabwidth: 8, padding: 4 }));
      },
    },
  ],
};
