/**
 * Reading xattrs for the differ. Node has no xattr API: one python3 helper process answers batches of
 * getxattr requests over a pipe (the applier sets xattrs through python3 the same way). Without python3 there
 * is no reader, and callers go without (capabilities are neither compared nor written, and the overlay fast
 * path, which must see opaque directories, is not taken).
 */
import { spawn, type ChildProcess } from 'node:child_process';

const XATTR_SCRIPT = `
import os, struct, sys
out = sys.stdout.buffer
out.write(b'R'); out.flush()
buf = b''
while True:
    chunk = os.read(0, 1 << 16)
    if not chunk:
        break
    buf += chunk
    parts = buf.split(b'\\0')
    buf = parts.pop()
    if len(parts) % 2:
        buf = parts.pop() + b'\\0' + buf
    res = []
    for i in range(0, len(parts), 2):
        try:
            v = os.getxattr(parts[i + 1], parts[i].decode(), follow_symlinks=False)
            res.append(struct.pack('>I', len(v)) + v)
        except OSError:
            res.append(b'\\xff\\xff\\xff\\xff')
    if res:
        out.write(b''.join(res)); out.flush()
`;

/** One python3 process answering getxattr requests in order (absent, unreadable or missing: null). */
export class XattrReader {
  private buf: Buffer = Buffer.alloc(0);
  private readonly pending: { want: number; got: (Buffer | null)[]; resolve: (v: (Buffer | null)[]) => void; reject: (e: unknown) => void }[] = [];
  private failure: unknown;

  private constructor(private readonly proc: ChildProcess) {
    proc.stdout!.on('data', (chunk: Buffer) => this.onData(chunk));
    proc.on('exit', () => this.fail(new Error('xattr helper exited')));
    proc.on('error', (err) => this.fail(err));
    proc.stdin!.on('error', (err) => this.fail(err));
    proc.stdout!.on('error', (err) => this.fail(err));
  }

  /** Starts the helper; null when python3 cannot run here. */
  static async open(): Promise<XattrReader | null> {
    let proc: ChildProcess;
    try {
      proc = spawn('python3', ['-c', XATTR_SCRIPT], { stdio: ['pipe', 'pipe', 'ignore'] });
    } catch {
      return null;
    }
    const ready = await new Promise<boolean>((resolve) => {
      proc.once('error', () => resolve(false));
      proc.once('exit', () => resolve(false));
      // The helper writes nothing but this byte until it is asked something.
      proc.stdout!.once('data', (d: Buffer) => resolve(d.length === 1 && d[0] === 0x52));
    });
    if (!ready) {
      proc.kill('SIGKILL');
      return null;
    }
    proc.stdout!.removeAllListeners('data');
    return new XattrReader(proc);
  }

  /** The value of xattr name on path (never following a final symlink), for each request, in order. */
  get(requests: { path: string; name: string }[]): Promise<(Buffer | null)[]> {
    if (requests.length === 0) return Promise.resolve([]);
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const parts: Buffer[] = [];
    for (const r of requests) parts.push(Buffer.from(`${r.name}\0${r.path}\0`, 'utf8'));
    return new Promise((resolve, reject) => {
      this.pending.push({ want: requests.length, got: [], resolve, reject });
      this.proc.stdin!.write(Buffer.concat(parts));
    });
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    let off = 0;
    while (this.pending.length > 0 && this.buf.length - off >= 4) {
      const len = this.buf.readUInt32BE(off);
      const head = this.pending[0]!;
      if (len === 0xffffffff) {
        head.got.push(null);
        off += 4;
      } else {
        if (this.buf.length - off < 4 + len) break;
        head.got.push(Buffer.from(this.buf.subarray(off + 4, off + 4 + len)));
        off += 4 + len;
      }
      if (head.got.length === head.want) {
        this.pending.shift();
        head.resolve(head.got);
      }
    }
    this.buf = this.buf.subarray(off);
  }

  private fail(err: unknown): void {
    this.failure ??= err;
    for (const p of this.pending.splice(0)) p.reject(err);
  }

  close(): void {
    this.failure ??= new Error('xattr helper closed');
    this.proc.stdin!.end();
    this.proc.kill('SIGTERM');
  }
}
