/**
 * containerd.services.content.v1.Content over the namespaced content store. Translation only: every rule
 * lives in src/metadata/content.ts and src/content/.
 */
import type * as grpc from '@grpc/grpc-js';
import { ContentService, type ContentServer, WriteAction, type Info, type WriteContentRequest, type WriteContentResponse } from '../gen/containerd/services/content/v1/content.js';
import { alreadyExists, invalidArgument, outOfRange } from '../../core/errdefs.js';
import type { ContentWriter } from '../../content/types.js';
import type { NamespacedContent } from '../../metadata/content.js';
import type { Logger } from '../../log/index.js';
import { bidiStream, messageReader, opContext, serverStream, unary, type GrpcService, grpcService } from '../call.js';
import { encodeReadContentResponse } from '../wire.js';
import { contentInfoToPb, ingestStatusToPb } from '../convert.js';
import type { CallContext } from '../call.js';
import type { ServerCall } from '../server.js';

/** The generated definition, with Read responses encoded in one allocation (they carry the bulk data). */
const definition = {
  ...ContentService,
  read: { ...ContentService.read, responseSerialize: encodeReadContentResponse },
};

/** Read responses carry up to this many bytes each (containerd uses the same size). */
const READ_CHUNK = 1 << 20;
/** List responses are batched to stay well under the message size limit. */
const LIST_BATCH = 100;



export function contentService(content: NamespacedContent, log: Logger): GrpcService {
  const store = (call: CallContext) => content.bind(opContext(call));
  const l = log.child({ service: 'content' });

  const implementation: ContentServer = {
    info: unary(l, 'Info', async (req: { digest: string }, call) => ({ info: contentInfoToPb(await store(call).info(req.digest)) })),

    update: unary(l, 'Update', async (req: { info?: Info; updateMask?: string[] }, call) => {
      if (!req.info) throw invalidArgument('info must be set');
      return { info: contentInfoToPb(await store(call).update(req.info, req.updateMask ?? [])) };
    }),

    list: serverStream(l, 'List', async (req: { filters: string[] }, send, call) => {
      const all = await store(call).list(req.filters);
      for (let i = 0; i < all.length; i += LIST_BATCH) await send({ info: all.slice(i, i + LIST_BATCH).map(contentInfoToPb) });
    }),

    delete: unary(l, 'Delete', async (req: { digest: string }, call) => {
      await store(call).delete(req.digest);
      return {};
    }),

    read: serverStream(l, 'Read', async (req: { digest: string; offset: number; size: number }, send, call) => {
      // As containerd's content server: a negative offset reads from the start, a size of zero or less reads to
      // the end. The store answers NOT_FOUND and OUT_OF_RANGE (an offset past the end) itself.
      const from = Math.max(0, req.offset);
      const stream = await store(call).read(req.digest, { offset: from, size: Math.max(0, req.size) });
      let offset = from;
      try {
        for await (const chunk of stream as AsyncIterable<Buffer>) {
          if (chunk.length <= READ_CHUNK) {
            // Sent as it came from the store, so the encoder can use its headroom.
            await send({ offset, data: chunk });
            offset += chunk.length;
            continue;
          }
          for (let at = 0; at < chunk.length; at += READ_CHUNK) {
            const data = chunk.subarray(at, at + READ_CHUNK);
            await send({ offset, data });
            offset += data.length;
          }
        }
      } finally {
        stream.destroy();
      }
    }),

    status: unary(l, 'Status', async (req: { ref: string }, call) => ({ status: ingestStatusToPb(await store(call).status(req.ref)) })),

    listStatuses: unary(l, 'ListStatuses', async (req: { filters: string[] }, call) => ({
      statuses: (await store(call).listStatuses(req.filters)).map(ingestStatusToPb),
    })),

    abort: unary(l, 'Abort', async (req: { ref: string }, call) => {
      await store(call).abort(req.ref);
      return {};
    }),

    write: bidiStream<WriteContentRequest, WriteContentResponse>(l, 'Write', (call, send) => writeSession(store(call), call, send)),
  };
  return grpcService<ContentServer>(definition, implementation);
}

/**
 * One Write session, with containerd's protocol: the first message names the ref (and may declare total and
 * expected digest); each STAT/WRITE/COMMIT gets one response carrying the current offset; COMMIT ends it.
 * A WRITE at offset 0 on a non-empty ingest restarts it; any other offset must equal the current one.
 */
async function writeSession(
  cs: ReturnType<NamespacedContent['bind']>,
  call: ServerCall,
  send: (m: WriteContentResponse) => Promise<void>,
): Promise<void> {
  const reader = messageReader<WriteContentRequest>(call);
  let req = await reader.next();
  if (!req) return;
  const ref = req.ref;
  if (!ref) throw invalidArgument('first message must have a reference');
  let total = req.total;
  let expected = req.expected;

  const wr: ContentWriter = await cs.writer({ ref, total, expected });
  // As containerd's server: one response message for the whole session, so what a STAT filled in (total,
  // times) stays in later answers; and after a normal end (COMMIT, or the client closing its side) the last
  // answer is sent once more (containerd's deferred Send), after the writer is closed.
  const msg: WriteContentResponse = { action: req.action, offset: 0, total: 0, digest: '', startedAt: undefined, updatedAt: undefined };
  try {
    await writeLoop(req);
  } finally {
    await wr.close();
  }
  await send(msg).catch(() => undefined); // the client may be gone: nothing to tell it then

  async function writeLoop(first: WriteContentRequest): Promise<void> {
    let req = first;
    for (;;) {
      const st = await wr.status();
      msg.action = req.action;
      msg.offset = st.offset;
      if (req.expected) {
        expected = req.expected;
        const existing = await cs.info(req.expected).catch(() => undefined);
        if (existing) {
          await wr.close();
          await cs.abort(ref).catch(() => undefined);
          throw alreadyExists(`blob with expected digest ${req.expected} exists`);
        }
      }
      if (req.total > 0) total = req.total;

      switch (req.action) {
        case WriteAction.STAT:
          msg.digest = wr.digest();
          msg.startedAt = st.startedAt;
          msg.updatedAt = st.updatedAt;
          msg.total = total;
          break;
        case WriteAction.WRITE:
        case WriteAction.COMMIT:
          if (req.offset > 0 && req.offset !== st.offset) {
            throw outOfRange(`write @${req.offset} must occur at current offset ${st.offset}`);
          }
          if (req.offset === 0 && st.offset > 0) {
            await wr.truncate(0);
            msg.offset = 0;
          }
          if (req.data.length > 0) {
            await wr.write(req.data);
            msg.offset += req.data.length;
          }
          if (req.action === WriteAction.COMMIT) {
            const labels = Object.keys(req.labels).length > 0 ? req.labels : undefined;
            await wr.commit(total, expected || undefined, { labels });
          }
          msg.digest = wr.digest();
          break;
        default:
          // containerd's server has no case for other actions: the answer is the message as it stands, with this
          // action and the current offset.
          break;
      }
      await send({ ...msg });
      if (req.action === WriteAction.COMMIT) return;
      const next = await reader.next();
      if (!next) return;
      req = next;
    }
  }
}
