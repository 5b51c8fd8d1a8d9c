/**
 * containerd's filters over snapshot Info (fields name, parent, kind, labels.<key>), for a backend's walk().
 * The stores and the namespaced layer use snapshotAdaptor; a backend of another package uses snapshotFilter.
 */
import { adapt, labelField, parseAll, type Adaptor } from '../filters/index.js';
import type { Info } from './types.js';

export function snapshotAdaptor(i: Info): Adaptor {
  return adapt((path) => {
    if (path.length === 0) return undefined;
    switch (path[0]) {
      case 'kind':
        return path.length === 1 ? i.kind : undefined;
      case 'name':
        return path.length === 1 ? i.name : undefined;
      case 'parent':
        return path.length === 1 ? i.parent : undefined;
      case 'labels':
        return labelField(i.labels, path.slice(1));
      default:
        return undefined;
    }
  });
}

/**
 * A predicate for walk(fn, filters): true for the Info the filters (containerd's syntax, any of them) select;
 * everything when there are none. A malformed filter is an 'invalid argument' error, thrown here.
 */
export function snapshotFilter(filters: string[] | undefined): (info: Info) => boolean {
  const f = parseAll(filters);
  return (info) => f.match(snapshotAdaptor(info));
}
