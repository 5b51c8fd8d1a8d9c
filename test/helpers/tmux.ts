/**
 * A real pseudo-terminal for tests of terminal output: a command run in a detached tmux session of a given
 * size (its own tmux server on a private socket, no status line), and the screen it leaves, read with
 * capture-pane. The server is killed afterwards, with whatever still runs in it.
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { tempDir } from './temp.js';

const execFileP = promisify(execFile);
const MARKER = '[tmux-exit ';
let serial = 0;

export interface TerminalRun {
  /** The command's exit status. */
  status: number;
  /**
   * What the terminal shows at the end, scroll-back included, one entry per logical line (rows joined where the
   * terminal wrapped a line, trailing spaces and the empty rows at the bottom dropped), without the exit marker.
   */
  lines: string[];
}

const sq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Runs `argv` in a `columns` x `rows` terminal until it exits (or `timeoutMs`), and returns the final screen. */
export async function runInTerminal(argv: string[], opts: { columns: number; rows: number; timeoutMs?: number }): Promise<TerminalRun> {
  const dir = await tempDir('strata-tmux-');
  const socket = `strata-test-${process.pid}-${++serial}`;
  const tmux = (...args: string[]) => execFileP('tmux', ['-L', socket, ...args], { encoding: 'utf8' });
  try {
    const conf = join(dir.path, 'tmux.conf');
    await writeFile(conf, 'set -g status off\nset -g history-limit 5000\n');
    // The marker comes after the command's own output; the shell then waits so the pane keeps its screen.
    const script = `${argv.map(sq).join(' ')}; echo "${MARKER}$?]"; exec sleep 600`;
    await tmux('-f', conf, 'new-session', '-d', '-s', 'main', '-x', String(opts.columns), '-y', String(opts.rows), 'sh', '-c', script);
    const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
    for (;;) {
      const { stdout } = await tmux('capture-pane', '-p', '-J', '-S', '-', '-t', 'main');
      const all = stdout.split('\n').map((l) => l.trimEnd());
      const at = all.findIndex((l) => l.startsWith(MARKER));
      if (at >= 0) {
        const status = Number(/\[tmux-exit (\d+)\]/.exec(all[at]!)![1]);
        return { status, lines: all.slice(0, at) };
      }
      if (Date.now() > deadline) throw new Error(`the command did not finish in the terminal; screen:\n${all.join('\n')}`);
      await sleep(100);
    }
  } finally {
    await tmux('kill-server').catch(() => undefined);
    await dir.cleanup();
  }
}
