/** Runs the unmodified ctr from Debian's containerd package against a socket. */
import { spawn } from 'node:child_process';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: { input?: string | Buffer; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    // A command that exits before reading its input would raise EPIPE here; its exit code tells the story.
    p.stdin.on('error', () => undefined);
    p.stdin.end(opts.input ?? '');
  });
}

export function ctr(address: string, args: string[], opts: { namespace?: string; input?: string | Buffer } = {}): Promise<RunResult> {
  return run('ctr', ['--address', address, '--namespace', opts.namespace ?? 'default', ...args], { input: opts.input });
}

/** Rows of a ctr-style table (header dropped), each split on runs of whitespace. */
export const tableRows = (out: string): string[][] =>
  out
    .trim()
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/));
