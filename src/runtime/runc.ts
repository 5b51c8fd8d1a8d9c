/**
 * A thin wrapper over the runc command line, as containerd's go-runc is: every call names the same state
 * root (`--root`) and a JSON log file, so that errors can be reported with runc's own message.
 *
 * Two kinds of calls: the long-lived foreground ones (`run`, `exec` without --detach), which the monitor
 * spawns itself and whose exit status is the container process's, and short control calls (kill, pause,
 * resume, ps, state, delete) that run to completion here.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { StrataError, failedPrecondition, notFound, unknown } from '../core/errdefs.js';

export interface RuncOptions {
  /** The runc binary (a name on PATH or a path). */
  binary: string;
  /** runc's state root (`runc --root`), one per namespace. */
  root: string;
  /** Use the systemd cgroup driver (`--systemd-cgroup`). */
  systemdCgroup?: boolean;
}

/** runc's global flags, in front of every subcommand. */
export function globalArgs(o: RuncOptions, logFile?: string): string[] {
  const args = ['--root', o.root];
  if (logFile) args.push('--log', logFile, '--log-format', 'json');
  if (o.systemdCgroup) args.push('--systemd-cgroup');
  return args;
}

/** `runc run` in the foreground: runc stays the parent of the container's init and exits with its status. */
export function runArgs(o: RuncOptions, id: string, bundle: string, pidFile: string, logFile: string): string[] {
  return [...globalArgs(o, logFile), 'run', '--bundle', bundle, '--pid-file', pidFile, id];
}

/** `runc exec` in the foreground: runc stays the parent of the process and exits with its status. */
export function execArgs(o: RuncOptions, id: string, processFile: string, pidFile: string, logFile: string): string[] {
  return [...globalArgs(o, logFile), 'exec', '--process', processFile, '--pid-file', pidFile, id];
}

/** The exit status of a process as a shell reports it: its code, or 128 + the signal that ended it. */
export function exitStatusOf(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  if (signal) return 128 + (constants.signals[signal] ?? 0);
  return 255;
}

/** The last error runc logged (its JSON log), for error messages. */
export async function lastLoggedError(logFile: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(logFile, 'utf8');
  } catch {
    return undefined;
  }
  const lines = text.trim().split('\n').reverse();
  for (const line of lines) {
    try {
      const rec = JSON.parse(line) as { level?: string; msg?: string };
      if ((rec.level === 'error' || rec.level === 'fatal') && rec.msg) return rec.msg;
    } catch {
      if (line.trim()) return line.trim();
    }
  }
  return undefined;
}

interface RunResult {
  stdout: string;
  stderr: string;
}

function runc(o: RuncOptions, args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(o.binary, [...globalArgs(o), ...args], { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const msg = (stderr || err.message).trim().replace(/^time="[^"]*" level=\w+ msg="(.*)"$/m, '$1');
        reject(classify(`runc ${args[0]}: ${msg}`));
      } else resolve({ stdout, stderr });
    });
  });
}

/** runc's wording mapped onto containerd's kinds. */
function classify(msg: string): StrataError {
  if (/does not exist|not exist/.test(msg)) return notFound(msg);
  if (/not running|process already finished|container not running|no such process/i.test(msg)) {
    return notFound('process already finished');
  }
  if (/container is paused|not paused|is not running|cannot/.test(msg)) return failedPrecondition(msg);
  return unknown(msg);
}

export async function kill(o: RuncOptions, id: string, signal: number, all: boolean): Promise<void> {
  await runc(o, ['kill', ...(all ? ['--all'] : []), id, String(signal)]);
}

export async function pause(o: RuncOptions, id: string): Promise<void> {
  await runc(o, ['pause', id]);
}

export async function resume(o: RuncOptions, id: string): Promise<void> {
  await runc(o, ['resume', id]);
}

/** The host pids of every process in the container. */
export async function ps(o: RuncOptions, id: string): Promise<number[]> {
  const { stdout } = await runc(o, ['ps', '--format', 'json', id]);
  const pids = JSON.parse(stdout.trim() || '[]') as number[] | null;
  return pids ?? [];
}

export interface RuncState {
  id: string;
  pid: number;
  status: string;
  bundle: string;
}

export async function state(o: RuncOptions, id: string): Promise<RuncState> {
  const { stdout } = await runc(o, ['state', id]);
  return JSON.parse(stdout) as RuncState;
}

/** `runc delete --force`: kills whatever is left and removes runc's state; a container runc does not know is fine. */
export async function forceDelete(o: RuncOptions, id: string): Promise<void> {
  try {
    await runc(o, ['delete', '--force', id]);
  } catch (err) {
    if (err instanceof StrataError && err.kind === 'not found') return;
    throw err;
  }
}
