/**
 * A process's standard streams, wired from the FIFOs the client created (ctr makes `<id>-stdin`,
 * `<id>-stdout`, `<id>-stderr` in a temp dir and opens its ends before Create) to the runc process the
 * monitor spawns.
 *
 * - stdout/stderr: the FIFO is opened read-write (an O_RDWR open of a FIFO never blocks on Linux) and that
 *   descriptor becomes the process's stdout/stderr directly; the monitor closes its own copy right after the
 *   spawn. The process holding a read-write descriptor means its writes never fail with EPIPE when the client
 *   goes away (`ctr run -d`), as containerd's shim keeps a reader open for the same reason; the client sees
 *   EOF when the container (and runc) exit. Output does not flow through the monitor, so it keeps flowing even
 *   if the monitor dies.
 * - stdin: the process gets the read end of a private FIFO in the bundle (a real pipe in blocking mode, so
 *   `sh` reads it normally); the monitor copies the client's stdin FIFO into the write end and closes it when
 *   the client's side reaches EOF or on CloseIO, which is how the process sees end of input. The client's FIFO
 *   is opened non-blocking and read through the event loop, which only reads once a writer has sent data or
 *   come and gone, so a client that never opens its end neither holds up Start nor causes an early EOF.
 *
 *   No open here ever blocks: a blocking FIFO open would sit in libuv's thread pool, and a process whose
 *   thread pool has a stuck thread cannot exit (libuv joins its threads at exit).
 * - terminal: runc in the foreground needs a terminal of its own to relay the container's pty; Node cannot
 *   allocate one, so the runc command runs under util-linux `script`, whose pty becomes runc's terminal.
 *   Resizing sets that pty's size with `stty`, and runc passes the SIGWINCH on to the container's console.
 */
import { execFile, spawnSync } from 'node:child_process';
import { closeSync, constants as fsc, lstatSync, openSync, readFileSync, readSync, readlinkSync, unlinkSync } from 'node:fs';
import { Socket } from 'node:net';

export interface StdioPaths {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

/** Creates a FIFO (Node has no mkfifo), in the background; failures are left to whoever uses it (see open). */
export function mkfifoAsync(path: string): void {
  execFile('mkfifo', ['-m', '600', path], () => undefined);
}

const isFifo = (path: string) => {
  try {
    return lstatSync(path).isFIFO();
  } catch {
    return false;
  }
};

/** Creates a FIFO (Node has no mkfifo). */
export function mkfifo(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // not there
  }
  const r = spawnSync('mkfifo', ['-m', '600', path]);
  if (r.status !== 0) throw new Error(`mkfifo ${path}: ${r.stderr?.toString().trim() || r.error?.message}`);
}

const closeQuietly = (fd: number | undefined) => {
  if (fd === undefined) return;
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
};

export class ProcessIO {
  /** What to hand to spawn() as stdio. */
  readonly stdio: (number | 'ignore')[];
  private readonly handedOver: number[] = [];
  private stdinWriter: Socket | undefined;
  private stdinSource: Socket | undefined;
  private stdinSourceFd: number | undefined;
  private stdinClosed = false;

  private constructor(
    readonly paths: StdioPaths,
    stdio: (number | 'ignore')[],
    handedOver: number[],
  ) {
    this.stdio = stdio;
    this.handedOver = handedOver;
  }

  /**
   * Opens the streams of one process. `pipeBase` names the private stdin FIFO (`<pipeBase>-stdin`), which
   * lives in the bundle; one made ahead of time (a spare monitor makes its init's) is used as it is.
   */
  static open(paths: StdioPaths, pipeBase: string): ProcessIO {
    const fds: number[] = [];
    let writerFd: number | undefined;
    try {
      let stdin: number | 'ignore' = 'ignore';
      if (paths.stdin) {
        const pipe = `${pipeBase}-stdin`;
        if (!isFifo(pipe)) mkfifo(pipe);
        // The monitor's end first, read-write (an open that never blocks); with a writer present, the
        // process's read-only end opens at once too, in blocking mode. Closing the monitor's end is then the
        // last writer going away: EOF for the process.
        writerFd = openSync(pipe, fsc.O_RDWR);
        stdin = openSync(pipe, fsc.O_RDONLY);
        fds.push(stdin);
        unlinkSync(pipe);
      }
      const outFd = paths.stdout ? openSync(paths.stdout, fsc.O_RDWR) : undefined;
      if (outFd !== undefined) fds.push(outFd);
      const errFd = paths.stderr ? openSync(paths.stderr, fsc.O_RDWR) : undefined;
      if (errFd !== undefined) fds.push(errFd);
      const stdout = outFd ?? 'ignore';
      // With a terminal everything arrives on the pty (stdout); runc's own complaints go there too.
      const stderr = paths.terminal ? stdout : (errFd ?? 'ignore');
      const io = new ProcessIO(paths, [stdin, stdout, stderr], fds);
      if (writerFd !== undefined) io.startStdinCopy(writerFd);
      return io;
    } catch (err) {
      for (const fd of fds) closeQuietly(fd);
      closeQuietly(writerFd);
      throw err;
    }
  }

  private startStdinCopy(writerFd: number): void {
    const writer = new Socket({ fd: writerFd, readable: false, writable: true });
    writer.on('error', () => this.closeStdin());
    this.stdinWriter = writer;
    let fd: number;
    try {
      fd = openSync(this.paths.stdin, fsc.O_RDONLY | fsc.O_NONBLOCK);
    } catch {
      this.closeStdin();
      return;
    }
    const src = new Socket({ fd, readable: true, writable: false });
    this.stdinSource = src;
    this.stdinSourceFd = fd;
    src.on('error', () => this.closeStdin());
    src.on('end', () => this.closeStdin());
    src.pipe(writer, { end: false });
  }

  /** Closes the descriptors that now belong to the spawned process. */
  afterSpawn(): void {
    for (const fd of this.handedOver.splice(0)) closeQuietly(fd);
  }

  /**
   * End of input for the process (CloseIO, or the client's stdin reached EOF). What the client wrote before
   * is still delivered: the client's FIFO is drained first (ctr calls CloseIO right after its last write).
   */
  closeStdin(): void {
    if (this.stdinClosed) return;
    this.stdinClosed = true;
    const src = this.stdinSource;
    if (src) {
      src.unpipe();
      src.pause();
      const rest: Buffer[] = [];
      if (this.stdinSourceFd !== undefined && !src.destroyed) {
        const buf = Buffer.allocUnsafe(64 * 1024);
        for (;;) {
          let n: number;
          try {
            n = readSync(this.stdinSourceFd, buf); // non-blocking: EAGAIN (thrown) when empty, 0 without writers
          } catch {
            break;
          }
          if (n <= 0) break;
          rest.push(Buffer.from(buf.subarray(0, n)));
        }
      }
      src.destroy();
      if (rest.length > 0) this.stdinWriter?.write(Buffer.concat(rest));
    }
    this.stdinWriter?.end();
  }

  close(): void {
    this.afterSpawn();
    this.closeStdin();
  }
}

const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The command line that gives `cmd args` a terminal: util-linux script, returning the command's exit status. */
export function withTerminal(cmd: string, args: string[]): { cmd: string; args: string[] } {
  return { cmd: 'script', args: ['-q', '-e', '-c', [cmd, ...args].map(shellQuote).join(' '), '/dev/null'] };
}

/**
 * Resizes the terminal `script` (pid) gave its child: finds the child's pty and sets its size. Best effort:
 * the pty's foreground process (runc) receives SIGWINCH and resizes the container's console.
 */
export async function resizeTerminal(scriptPid: number, width: number, height: number): Promise<void> {
  let children: string[];
  try {
    children = readFileSync(`/proc/${scriptPid}/task/${scriptPid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
  } catch {
    return;
  }
  for (const child of children) {
    let tty: string;
    try {
      tty = readlinkSync(`/proc/${child}/fd/0`);
    } catch {
      continue;
    }
    if (!tty.startsWith('/dev/pts/')) continue;
    await new Promise<void>((resolve) => {
      execFile('stty', ['-F', tty, 'rows', String(height), 'cols', String(width)], () => resolve());
    });
    return;
  }
}
