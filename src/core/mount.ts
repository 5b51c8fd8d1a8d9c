/**
 * The mount record every layer passes around: snapshotters return it, the differ and the runtime mount it
 * (src/mount does the mounting).
 */
/** A mount as containerd describes it: what `mount -t <type> -o <options> <source> <target>` would do. */
export interface Mount {
  type: string;
  source: string;
  /** Only set for mounts relative to another (unused by the backends here). */
  target?: string;
  options: string[];
}
