/**
 * Encoding of Strata's typed events into protobuf Any values, and decoding of known ones for filters.
 * containerd 1.6 names event types by their bare full message name ("containerd.events.ContentDelete").
 */
import * as container from './gen/containerd/events/container.js';
import * as content from './gen/containerd/events/content.js';
import * as image from './gen/containerd/events/image.js';
import * as namespace from './gen/containerd/events/namespace.js';
import * as snapshot from './gen/containerd/events/snapshot.js';
import * as task from './gen/containerd/events/task.js';
import type { Any } from './gen/google/protobuf/any.js';
import type { EventPayload } from '../events/types.js';

interface Codec {
  encode(m: unknown): { finish(): Uint8Array };
  decode(b: Uint8Array): unknown;
  fromPartial(o: unknown): unknown;
}

const codecs = new Map<string, Codec>();
for (const mod of [container, content, image, namespace, snapshot, task]) {
  const pkg = (mod as { protobufPackage?: string }).protobufPackage ?? 'containerd.events';
  for (const [name, value] of Object.entries(mod)) {
    const c = value as Partial<Codec>;
    if (c && typeof c === 'object' && typeof c.encode === 'function' && typeof c.fromPartial === 'function') {
      codecs.set(`${pkg}.${name}`, c as Codec);
    }
  }
}

/** The message name of a type URL: "types.example.com/containerd.events.X" and "containerd.events.X" alike. */
const messageName = (typeUrl: string) => typeUrl.replace(/^.*\//, '');

export function encodeEvent(e: EventPayload): Any {
  if (e.kind === 'opaque') return { typeUrl: e.typeUrl, value: Buffer.from(e.value) };
  // A client's event goes out byte for byte as it came in, as containerd's exchange passes the Any through.
  if (e.raw) return { typeUrl: e.type, value: Buffer.from(e.raw) };
  const codec = codecs.get(messageName(e.type));
  if (!codec) throw new Error(`no protobuf type for event ${e.type}`);
  return { typeUrl: e.type, value: Buffer.from(codec.encode(codec.fromPartial(e.data)).finish()) };
}

/** Known types become typed payloads (so `event.*` filters can see their fields); others stay opaque. */
export function decodeEvent(any: Any): EventPayload {
  const codec = codecs.get(messageName(any.typeUrl));
  if (codec) {
    try {
      return { kind: 'typed', type: any.typeUrl, data: codec.decode(any.value) as Record<string, unknown>, raw: any.value };
    } catch {
      // fall through: keep the bytes as they came
    }
  }
  return { kind: 'opaque', typeUrl: any.typeUrl, value: any.value };
}
