/**
 * User-namespace ID mappings as containerd writes them in the snapshot labels
 * `containerd.io/snapshot/uidmapping` and `containerd.io/snapshot/gidmapping` (containerd 2.x's userns.IDMap):
 * "containerID:hostID:size" entries, comma-separated. The overlay snapshotter turns the labels into
 * `uidmap=` / `gidmap=` mount options (same text), src/mount performs them, and the runtime puts them in the OCI
 * spec's linux.uidMappings / gidMappings.
 */
import { invalidArgument } from './errdefs.js';

export const LABEL_SNAPSHOT_UIDMAPPING = 'containerd.io/snapshot/uidmapping';
export const LABEL_SNAPSHOT_GIDMAPPING = 'containerd.io/snapshot/gidmapping';

export interface IDMapping {
  containerID: number;
  hostID: number;
  size: number;
}

const INVALID_ID = 2 ** 32 - 1;

/** One "c:h:s" entry, with containerd's bounds (each below 2^32-1). */
function parseEntry(text: string): IDMapping {
  const m = /^(\d+):(\d+):(\d+)$/.exec(text.trim());
  if (!m) throw invalidArgument(`input value ${text} unparsable: want containerID:hostID:size`);
  const [containerID, hostID, size] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (containerID >= INVALID_ID || hostID >= INVALID_ID || size >= INVALID_ID) throw invalidArgument(`invalid mapping "${text}"`);
  return { containerID, hostID, size };
}

/** Parses a mapping list ("" is no mapping, as containerd's Unmarshal). */
export function parseIDMappings(text: string): IDMapping[] {
  if (text === '') return [];
  return text.split(',').map(parseEntry);
}

export function formatIDMappings(maps: IDMapping[]): string {
  return maps.map((m) => `${m.containerID}:${m.hostID}:${m.size}`).join(',');
}

/** The host ID of a container ID, or undefined when no entry maps it (containerd's toHost). */
export function toHostID(id: number, maps: IDMapping[]): number | undefined {
  for (const m of maps) {
    if (id >= m.containerID && id < m.containerID + m.size) {
      const host = m.hostID + (id - m.containerID);
      return host < INVALID_ID ? host : undefined;
    }
  }
  return undefined;
}

/**
 * The host uid/gid of the container's root from the two label values (containerd's IDMap.RootPair), or an
 * invalid-argument error naming what cannot be mapped. An absent list maps IDs onto themselves, as containerd's.
 */
export function rootPair(uidmap: string | undefined, gidmap: string | undefined): { uid: number; gid: number } {
  const uids = parseIDMappings(uidmap ?? '');
  const gids = parseIDMappings(gidmap ?? '');
  const uid = uids.length === 0 ? 0 : toHostID(0, uids);
  const gid = gids.length === 0 ? 0 : toHostID(0, gids);
  if (uid === undefined || gid === undefined) throw invalidArgument('container ID 0 cannot be mapped to a host ID');
  return { uid, gid };
}
