/**
 * Limits on what one layer may expand to, so that a small hostile blob (10 MB of gzip that inflates to 10 GiB,
 * millions of empty entries, megabyte-long names) cannot fill the disk or stall the applier. Configured under
 * the differ's plugin section, [plugins."io.containerd.differ.v1.walking"]; the defaults are far above what
 * real images reach (docs/configuration.md). 0 turns a limit off.
 *
 * A layer over a limit fails with 'invalid argument' (gRPC INVALID_ARGUMENT) naming the limit and its value:
 * the layer is refused as input, like a corrupt or hostile one. (RESOURCE_EXHAUSTED would read as "unknown" to
 * containerd 1.6 clients, whose errdefs do not know it.) The snapshot the layer was being applied to is then
 * partly written, and the caller removes it, as for any failed apply.
 */
import { invalidArgument, type StrataError } from '../core/errdefs.js';

export const DIFFER_SECTION = 'plugins."io.containerd.differ.v1.walking"';

/** The differ plugin's configuration keys (TOML names). */
export interface DifferConfig {
  /** Uncompressed bytes of one layer (the tar stream). */
  max_layer_size: number;
  /** Uncompressed bytes per compressed byte of the blob, checked once past expansion_ratio_min_size. */
  max_expansion_ratio: number;
  /** Uncompressed bytes below which the expansion ratio is not checked. */
  expansion_ratio_min_size: number;
  /** Tar entries (headers: files, directories, links, whiteouts...) in one layer. */
  max_entries: number;
  /** Bytes of one entry's name (or hardlink target) as written in the tar. */
  max_path_length: number;
  /** Components of one entry's name once cleaned. */
  max_path_depth: number;
  /** Extended attributes (PAX SCHILY.xattr.* records) of one entry (of one path, when a layer repeats it). */
  max_xattrs: number;
  /** Bytes of one entry's extended attributes, names and values together (of one path, when repeated). */
  max_xattr_size: number;
  /**
   * Bytes of extended attributes in one layer, every entry's together (names and values): they are held in
   * memory until the layer's end, when they are set (after every chown, which would drop security.capability).
   */
  max_layer_xattr_size: number;
  /**
   * Bytes of the extended headers in front of one entry, together: its PAX records (every 'x' header before
   * it), GNU long names and links ('L', 'K'), global PAX headers ('g'). They are held in memory until the entry.
   */
  max_pax_header_size: number;
}

export function differDefaults(): DifferConfig {
  return {
    max_layer_size: 64 * 2 ** 30, // 64 GiB
    max_expansion_ratio: 1000, // deflate itself cannot exceed ~1032:1; zstd can, on runs of zeros
    expansion_ratio_min_size: 2 ** 30, // 1 GiB
    max_entries: 10_000_000, // large real layers hold a few hundred thousand
    max_path_length: 16_384, // 4x PATH_MAX: no longer name can be created on Linux anyway
    max_path_depth: 4096, // a creatable path has fewer than 2048 components
    max_xattrs: 128, // real layers carry one or two (security.capability, an SELinux label)
    max_xattr_size: 256 * 1024, // Linux allows 64 KiB for one value, and ext4 one 4 KiB block for all of a file's
    max_layer_xattr_size: 64 << 20, // 100k files each with an SELinux label and a capability: under 10 MiB
    max_pax_header_size: 1 << 20, // a PAX set holds a name, a link target, a few numbers and the xattrs
  };
}

/** The limits as the applier uses them (0: none). */
export type LayerLimits = DifferConfig;

export const NO_LIMITS: LayerLimits = {
  max_layer_size: 0,
  max_expansion_ratio: 0,
  expansion_ratio_min_size: 0,
  max_entries: 0,
  max_path_length: 0,
  max_path_depth: 0,
  max_xattrs: 0,
  max_xattr_size: 0,
  max_layer_xattr_size: 0,
  max_pax_header_size: 0,
};

/** Reads and checks the plugin section (its keys over the defaults): each a whole number, 0 or more. */
export function limitsFromConfig(cfg: Record<string, unknown>): LayerLimits {
  const out = differDefaults();
  for (const key of Object.keys(out) as (keyof DifferConfig)[]) {
    const v = cfg[key];
    if (v === undefined) continue;
    const n = typeof v === 'bigint' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
      throw invalidArgument(`config: ${DIFFER_SECTION}.${key} must be a whole number, 0 or more (0: no limit)`);
    }
    out[key] = n;
  }
  return out;
}

/** The error of a layer over `key`: names the limit, its value and where it is set. */
export function limitError(key: keyof DifferConfig, value: number, what: string): StrataError {
  return invalidArgument(`layer over the limit ${key} = ${value} (${DIFFER_SECTION}): ${what}`);
}

/**
 * The most uncompressed bytes a layer whose blob is `compressed` bytes (undefined: not compressed) may expand
 * to, and the error to give past it; undefined when neither max_layer_size nor the ratio bounds it.
 */
export function uncompressedCap(limits: LayerLimits, compressed: number | undefined): { max: number; error: () => StrataError } | undefined {
  let cap: { max: number; error: () => StrataError } | undefined;
  if (limits.max_layer_size > 0) {
    const max = limits.max_layer_size;
    cap = { max, error: () => limitError('max_layer_size', max, `more than ${max} bytes uncompressed`) };
  }
  if (compressed !== undefined && limits.max_expansion_ratio > 0) {
    const ratio = limits.max_expansion_ratio;
    const max = Math.max(limits.expansion_ratio_min_size, ratio * compressed);
    if (cap === undefined || max < cap.max) {
      cap = {
        max,
        error: () =>
          limitError(
            'max_expansion_ratio',
            ratio,
            `more than ${ratio} times its ${compressed} compressed bytes uncompressed (checked past expansion_ratio_min_size = ${limits.expansion_ratio_min_size})`,
          ),
      };
    }
  }
  return cap;
}
