/** The garbage collector: containerd's reference model over the metadata database (docs/gc.md). */
export * from './types.js';
export { MetadataCollector, type CollectorOptions } from './collector.js';
