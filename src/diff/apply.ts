/**
 * Applying an uncompressed layer tar to a directory, the way containerd's archive.Apply does (semantics in
 * apply-core.ts). The work runs in a small pool of worker threads: this side only reads the stream and hands
 * its chunks over (with back-pressure), so the daemon's event loop stays free while thousands of files are
 * created with synchronous calls in the worker.
 */
import { crashPoint } from '../core/crashpoint.js';
import { createHash } from 'node:crypto';
import { lstat, realpath } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import type { Readable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { invalidArgument, StrataError, type ErrorKind } from '../core/errdefs.js';
import type { Logger } from '../log/index.js';
import { layerError } from './apply-core.js';
import { NO_LIMITS, uncompressedCap, type LayerLimits } from './limits.js';

export { cleanComponents } from './apply-core.js';

export interface ApplyOptions {
  /**
   * 'delete' (default): whiteouts remove what they name in the target. 'overlay': the target is an overlay
   * upperdir; `.wh.<name>` becomes a 0/0 character device and `.wh..wh..opq` sets the opaque xattr
   * (trusted.overlay.opaque=y, or user.overlay.opaque=y with `userxattr`).
   */
  whiteouts?: 'delete' | 'overlay';
  /** With whiteouts 'overlay': the overlay mount uses `userxattr`, so the opaque xattr is user.overlay.opaque. */
  userxattr?: boolean;
  /** With whiteouts 'overlay': the lowerdirs, top first, whose directory metadata implicit parents copy. */
  parents?: string[];
  /** Where warnings go (devices skipped when not root). */
  logger?: Logger;
  /** Limits on what the layer may expand to (./limits.ts); none if not given. */
  limits?: LayerLimits;
  /** Bytes of the compressed blob the stream comes from (for max_expansion_ratio); undefined: not compressed. */
  compressedSize?: number;
  /**
   * The stream's chunks are this apply's alone once read (a gunzip stream's are: zlib hands over a full output
   * buffer and allocates a new one): a chunk that spans its whole ArrayBuffer is then moved to the worker
   * rather than copied. Default false: chunks are copied (the producer may still hold them).
   */
  ownsChunks?: boolean;
}

export interface ApplyResult {
  /** sha256 digest ("sha256:<hex>") of the uncompressed tar bytes as read, padding and trailer included. */
  diffID: string;
  /** Uncompressed bytes read. */
  size: number;
  /** Directories the layer implied without entries and no lower layer described (made 0755 root), relative. */
  implicitDirs: string[];
}

/** Bytes handed to a worker and not yet applied, above which reading pauses. */
const HIGH_WATER = 8 << 20;

/**
 * Applies the uncompressed tar stream `tar` to the directory `target` and returns its diffID and size.
 *
 * The first error (hostile entry, I/O error, truncated or corrupt stream) stops the application and the
 * promise rejects; the target is then left partly written and the caller must discard it (remove the active
 * snapshot it belongs to). Hostile entries are rejected with an invalid-argument error naming the entry; no
 * entry is ever written outside `target`.
 */
export async function applyTar(tar: Readable, target: string, opts: ApplyOptions = {}): Promise<ApplyResult> {
  let root: string;
  try {
    root = await realpath(target);
  } catch (err) {
    throw layerError(err, target, undefined).wrap('apply target');
  }
  const st = await lstat(root);
  if (!st.isDirectory()) throw invalidArgument('apply target is not a directory');
  const worker = pool.acquire();
  let healthy = true;
  try {
    crashPoint('diff.apply.before-write');
    const res = await runApply(worker, tar, root, opts);
    crashPoint('diff.apply.after-write');
    return res;
  } catch (err) {
    healthy = !(err instanceof WorkerCrash);
    throw err instanceof WorkerCrash ? err.cause : err;
  } finally {
    pool.release(worker, healthy);
  }
}

class WorkerCrash extends Error {}

let nextId = 0;

type Out =
  | { op: 'ack'; id: number; bytes: number }
  | { op: 'done'; id: number; size: number; implicitDirs?: string[] }
  | { op: 'error'; id: number; kind: ErrorKind; message: string; code?: string }
  | { op: 'warn'; id: number; msg: string; fields: Record<string, unknown> }
  | { op: 'aborted'; id: number };

function runApply(worker: Worker, tar: Readable, root: string, opts: ApplyOptions): Promise<ApplyResult> {
  const id = ++nextId;
  return new Promise<ApplyResult>((resolve, reject) => {
    // The diffID is hashed here, on another core than the worker creating files.
    const hash = createHash('sha256');
    let inflight = 0;
    let wake: (() => void) | undefined;
    let settled = false;
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      worker.off('message', onMessage);
      worker.off('error', onCrash);
      worker.off('exit', onCrash);
      fn();
      const w = wake;
      wake = undefined;
      w?.();
    };
    const onMessage = (m: Out) => {
      if (m.id !== id) return; // a late message of an earlier, aborted apply
      switch (m.op) {
        case 'ack':
          inflight -= m.bytes;
          if (inflight <= HIGH_WATER / 2 && wake) {
            const w = wake;
            wake = undefined;
            w();
          }
          break;
        case 'warn':
          opts.logger?.warn(m.msg, m.fields);
          break;
        case 'done':
          settle(() => resolve({ diffID: `sha256:${hash.digest('hex')}`, size: m.size, implicitDirs: m.implicitDirs ?? [] }));
          break;
        case 'error': {
          const err = m.kind === 'unknown' && m.code ? Object.assign(new Error(m.message), { code: m.code }) : new StrataError(m.kind, m.message);
          settle(() => reject(err));
          tar.destroy();
          break;
        }
      }
    };
    const onCrash = (err: unknown) => settle(() => reject(new WorkerCrash('apply worker exited', { cause: err instanceof Error ? err : new Error(`apply worker exited (${String(err)})`) })));
    worker.on('message', onMessage);
    worker.on('error', onCrash);
    worker.on('exit', onCrash);
    const limits = opts.limits ?? NO_LIMITS;
    worker.postMessage({
      op: 'start',
      id,
      root,
      options: {
        whiteouts: opts.whiteouts ?? 'delete',
        userxattr: opts.userxattr ?? false,
        parents: opts.parents ?? [],
        limits: {
          max_entries: limits.max_entries,
          max_path_length: limits.max_path_length,
          max_path_depth: limits.max_path_depth,
          max_xattrs: limits.max_xattrs,
          max_xattr_size: limits.max_xattr_size,
          max_layer_xattr_size: limits.max_layer_xattr_size,
          max_pax_header_size: limits.max_pax_header_size,
        },
      },
    });
    // The uncompressed size is bounded here, before the bytes reach the worker: nothing past the cap is written.
    const cap = uncompressedCap(limits, opts.compressedSize);
    let total = 0;
    (async () => {
      for await (const chunk of tar as AsyncIterable<Buffer | string>) {
        if (settled) return;
        const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
        total += buf.length;
        if (cap !== undefined && total > cap.max) {
          worker.postMessage({ op: 'abort', id });
          settle(() => reject(cap.error()));
          tar.destroy();
          return;
        }
        hash.update(buf);
        // Moved to the worker, not cloned: the chunk's own memory when it is ours alone (ownsChunks, and the
        // chunk is its whole ArrayBuffer), else a copy (whoever produced the chunk may still hold it: a moved
        // ArrayBuffer is emptied for them).
        const whole = opts.ownsChunks === true && buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength;
        const data = whole ? new Uint8Array(buf.buffer, 0, buf.byteLength) : new Uint8Array(buf);
        inflight += data.byteLength;
        worker.postMessage({ op: 'data', id, chunk: data }, [data.buffer as ArrayBuffer]);
        if (total === buf.length) crashPoint('diff.apply.mid-write'); // the first chunk is with the worker
        if (inflight > HIGH_WATER) await new Promise<void>((r) => (wake = r));
      }
      if (!settled) worker.postMessage({ op: 'end', id });
    })().catch((err: unknown) => {
      if (settled) return; // our own tar.destroy() after the worker failed
      worker.postMessage({ op: 'abort', id });
      settle(() => reject(wrapIo(err)));
    });
  });
}

function wrapIo(err: unknown): unknown {
  if (err instanceof Error && /Unexpected end|Invalid tar header|Invalid header|unexpected end of file/i.test(err.message)) {
    return invalidArgument(`invalid tar stream: ${err.message}`, err);
  }
  return err;
}

/** The worker script: next to this module when compiled; under the test runner (TypeScript), the build's. */
function workerUrl(): URL {
  const here = new URL(import.meta.url);
  return here.pathname.endsWith('.ts') ? new URL('../../dist/src/diff/apply-worker.js', here) : new URL('./apply-worker.js', here);
}

/** Idle workers are kept (unreferenced, so they never hold the process open) up to the number of cores. */
class WorkerPool {
  private readonly idle: Worker[] = [];
  private readonly max = Math.max(2, availableParallelism());

  acquire(): Worker {
    const w = this.idle.pop() ?? new Worker(workerUrl());
    w.ref();
    return w;
  }

  release(w: Worker, healthy: boolean): void {
    if (!healthy || this.idle.length >= this.max) {
      void w.terminate();
      return;
    }
    w.unref();
    this.idle.push(w);
  }
}

const pool = new WorkerPool();
