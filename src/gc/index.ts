/** The garbage collector: containerd's reference model over the metadata database (docs/gc.md). */
export * from './types.js';
export { MetadataCollector, type CollectorOptions } from './collector.js';
export {
  LABEL_GC_BREF_CONTAINER,
  LABEL_GC_BREF_CONTENT,
  LABEL_GC_BREF_IMAGE,
  LABEL_GC_BREF_SNAPSHOT,
  LABEL_GC_EXPIRE,
  LABEL_GC_FLAT,
  LABEL_GC_REF_CONTENT,
  LABEL_GC_REF_SNAPSHOT,
  LABEL_GC_ROOT,
} from './graph.js';
