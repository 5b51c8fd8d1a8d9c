/** Runs the unmodified ctr from Debian's containerd package against a socket, and reads its tables. */
import { spawn } from 'node:child_process';
import { expect } from 'vitest';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: { input?: string | Buffer; env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd });
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

/** Tabs expanded to spaces at tab stops of 8, as a terminal shows them. */
function expandTabs(line: string): string {
  let out = '';
  for (const ch of line) out += ch === '\t' ? ' '.repeat(8 - (out.length % 8)) : ch;
  return out;
}

/**
 * The rows of a table as ctr and strata print them (Go's tabwriter), the header line dropped, blank lines
 * skipped. Without `header`, each row is split on runs of whitespace (an empty cell vanishes). With `header`,
 * the header line must hold exactly these column names, and every row is cut at the columns where they start
 * (tabs expanded), so a cell may be empty or hold spaces (e.g. "CREATED AT", ctr's "2 seconds").
 */
export function tableRows(out: string, header?: string[]): string[][] {
  const lines = out.split('\n').filter((l) => l.trim() !== '');
  if (!header) return lines.slice(1).map((l) => l.trim().split(/\s+/));
  const expanded = lines.map(expandTabs);
  const starts = header.map((h) => expanded[0]!.indexOf(h));
  const cut = (l: string) => starts.map((s, i) => l.slice(s, starts[i + 1]).trim());
  expect(cut(expanded[0]!), 'table header').toEqual(header);
  for (let i = 1; i < starts.length; i++) expect(starts[i]).toBeGreaterThan(starts[i - 1]!);
  return expanded.slice(1).map(cut);
}
