/**
 * Reading a whole blob (an index, a manifest, a config) into memory: the one reader type the image code is
 * written over, so the same walks run in the daemon (over its content store) and in the CLI (over the content
 * API), and the one cap on what is read that way.
 */
import type { ContentStore } from '../content/types.js';
import { invalidArgument } from '../core/errdefs.js';
import type { Descriptor } from '../core/descriptor.js';

/**
 * The largest document read into memory whole: a manifest, index or config blob, or an archive's
 * index.json / manifest.json / oci-layout (containerd's archive importer jsonLimit). Registries have their
 * own, smaller cap on what a resolve accepts (remote/resolver.ts MAX_MANIFEST_SIZE, containerd's
 * MaxManifestSize).
 */
export const MAX_DOCUMENT_SIZE = 20 << 20;

/** Reads a whole (small, JSON) blob; rejects with 'not found' when it is missing. */
export type BlobReader = (desc: Descriptor) => Promise<Uint8Array>;

/** @throws invalid argument when a blob of `size` bytes is over MAX_DOCUMENT_SIZE. */
export function checkDocumentSize(digest: string, size: number): void {
  if (size > MAX_DOCUMENT_SIZE) {
    throw invalidArgument(`blob ${digest}: ${size} bytes, more than the ${MAX_DOCUMENT_SIZE} allowed for a document`);
  }
}

/** A whole blob from the content store, refusing one whose stored size is over MAX_DOCUMENT_SIZE. */
export async function readBlob(content: ContentStore, desc: Pick<Descriptor, 'digest' | 'size'>): Promise<Buffer> {
  const info = await content.info(desc.digest);
  checkDocumentSize(desc.digest, info.size);
  const chunks: Buffer[] = [];
  for await (const c of await content.read(desc.digest)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
