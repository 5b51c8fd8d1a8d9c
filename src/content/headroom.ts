/**
 * Buffers with spare bytes in front. The content store reads blob data into them so that a consumer that
 * frames each chunk (the gRPC layer puts a protobuf header before it) can write the header in place instead
 * of allocating and copying a new buffer per chunk. Only buffers made here are marked; anything else is
 * treated as having no headroom.
 */
export const HEADROOM = 32;

const marked = new WeakSet<Uint8Array>();

/** A Buffer of `size` bytes with HEADROOM unused bytes before it in the same (unshared) memory. */
export function allocWithHeadroom(size: number): Buffer {
  // Large enough that Node never takes it from its shared pool: the headroom belongs to this chunk alone.
  const whole = Buffer.allocUnsafeSlow(HEADROOM + size);
  const view = whole.subarray(HEADROOM);
  marked.add(view);
  return view;
}

/** A shorter view of a headroom buffer keeps the headroom (for a final, partly filled chunk). */
export function shrinkWithHeadroom(buf: Buffer, size: number): Buffer {
  if (!marked.has(buf)) return buf.subarray(0, size);
  const view = buf.subarray(0, size);
  marked.add(view);
  return view;
}

/** How many bytes before `buf` may be written: HEADROOM for buffers made here, else 0. */
export function headroomOf(buf: Uint8Array): number {
  return marked.has(buf) ? HEADROOM : 0;
}
