/** The eStargz format (stargz-snapshotter's lazily-pullable gzip layers): names, footer, reader, writer. */
export * from './types.js';
export { parseFooter, footerBytes } from './footer.js';
export { openEstargz, cleanEntryName } from './reader.js';
export { EstargzWriter, type BlobSink, type EstargzResult, type EstargzWriterOptions, type WriterEntry } from './writer.js';
