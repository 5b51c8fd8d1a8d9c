/**
 * Buffers with spare bytes in front. The content store reads blob data into them so that a consumer that
 * frames each chunk (the gRPC layer puts a protobuf header before it) can write the header in place instead
 * of allocating and copying a new buffer per chunk. Only buffers made here are marked; anything else is
 * treated as having no headroom.
 */
export const HEADROOM = 32;

/** Each marked view and how many spare bytes lie before it. */
const marked = new WeakMap<Uint8Array, number>();

/** A Buffer of `size` bytes with HEADROOM unused bytes before it in the same (unshared) memory. */
export function allocWithHeadroom(size: number): Buffer {
  // Large enough that Node never takes it from its shared pool: the headroom belongs to this chunk alone.
  const whole = Buffer.allocUnsafeSlow(HEADROOM + size);
  const view = whole.subarray(HEADROOM);
  marked.set(view, HEADROOM);
  return view;
}

/** A shorter view of a headroom buffer keeps the headroom (for a final, partly filled chunk). */
export function shrinkWithHeadroom(buf: Buffer, size: number): Buffer {
  const room = marked.get(buf);
  if (room === undefined) return buf.subarray(0, size);
  const view = buf.subarray(0, size);
  marked.set(view, room);
  return view;
}

/** How many bytes before `buf` may be written: what is left of HEADROOM for buffers made here, else 0. */
export function headroomOf(buf: Uint8Array): number {
  return marked.get(buf) ?? 0;
}

/**
 * Marks a view that starts `used` bytes before a headroom buffer (a header was written in place) as keeping
 * the rest of the headroom, so the next layer (the gRPC message prefix) can write in place too.
 */
export function extendIntoHeadroom(buf: Buffer, from: Uint8Array, used: number): Buffer {
  const room = marked.get(from);
  if (room !== undefined && room >= used) marked.set(buf, room - used);
  return buf;
}
