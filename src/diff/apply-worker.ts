/**
 * The worker thread that applies layers (see apply-core.ts). Protocol with src/diff/apply.ts, one apply at a
 * time per worker:
 *   in:  {op:'start', root, options} · {op:'data', chunk} · {op:'end'} · {op:'abort'}
 *   out: {op:'ack', bytes} per data message · {op:'done', diffID, size} · {op:'error', kind, message}
 *        · {op:'warn', msg, fields}
 * After an error the worker ignores data until the next start.
 */
import { parentPort } from 'node:worker_threads';
import { StrataError } from '../core/errdefs.js';
import { LayerApplier, type CoreOptions } from './apply-core.js';

type In =
  | { op: 'start'; id: number; root: string; options: Omit<CoreOptions, 'warn' | 'isRoot'> }
  | { op: 'data'; id: number; chunk: Uint8Array }
  | { op: 'end'; id: number }
  | { op: 'abort'; id: number };

const port = parentPort!;
let current: LayerApplier | undefined;
let currentId = 0;
const isRoot = process.getuid?.() === 0;

function fail(id: number, err: unknown): void {
  current?.abort();
  current = undefined;
  const kind = err instanceof StrataError ? err.kind : 'unknown';
  const message = err instanceof StrataError ? err.detail : err instanceof Error ? err.message : String(err);
  port.postMessage({ op: 'error', id, kind, message, code: (err as NodeJS.ErrnoException)?.code });
}

port.on('message', (m: In) => {
  switch (m.op) {
    case 'start':
      currentId = m.id;
      try {
        current = new LayerApplier(m.root, {
          ...m.options,
          isRoot,
          warn: (msg, fields) => port.postMessage({ op: 'warn', id: m.id, msg, fields }),
        });
      } catch (err) {
        fail(m.id, err);
      }
      return;
    case 'data': {
      const bytes = m.chunk.byteLength;
      if (current && m.id === currentId) {
        try {
          current.write(Buffer.from(m.chunk.buffer, m.chunk.byteOffset, m.chunk.byteLength));
        } catch (err) {
          fail(m.id, err);
        }
      }
      port.postMessage({ op: 'ack', id: m.id, bytes });
      return;
    }
    case 'end':
      if (!current || m.id !== currentId) return;
      try {
        const r = current.finish();
        current = undefined;
        port.postMessage({ op: 'done', id: m.id, ...r });
      } catch (err) {
        fail(m.id, err);
      }
      return;
    case 'abort':
      if (m.id !== currentId) return;
      current?.abort();
      current = undefined;
      port.postMessage({ op: 'aborted', id: m.id });
      return;
  }
});
