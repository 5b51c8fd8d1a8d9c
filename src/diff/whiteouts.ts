/**
 * Whiteouts, the two ways a deletion is written down. In a layer tar (the OCI image spec, containerd's
 * archive package): an empty `.wh.<name>` entry deletes `<name>`, and `.wh..wh..opq` in a directory hides
 * everything the lower layers have in it. In an overlayfs upperdir: a 0/0 character device deletes, and the
 * `overlay.opaque` xattr set to "y" (trusted.*, or user.* when the mount has `userxattr`) makes a directory
 * opaque. The applier turns the first form into the second; the differ's overlay fast path reads the second
 * and writes the first.
 */
import type { BigIntStats } from 'node:fs';

/** Prefix of a whiteout entry's base name in a layer tar. */
export const WH_PREFIX = '.wh.';
/** Base name of the opaque-directory whiteout in a layer tar. */
export const WH_OPAQUE = '.wh..wh..opq';

/** The xattr overlayfs marks an opaque directory with. */
export const overlayOpaqueXattr = (userxattr: boolean) => (userxattr ? 'user.overlay.opaque' : 'trusted.overlay.opaque');
/** Its value on an opaque directory. */
export const OVERLAY_OPAQUE = 'y';

/** An overlayfs whiteout: a character device numbered 0/0. */
export const isOverlayWhiteout = (st: BigIntStats) => st.isCharacterDevice() && st.rdev === 0n;
/** mknod(1)'s arguments after the path that make an overlayfs whiteout (mode 0 goes with `-m`). */
export const OVERLAY_WHITEOUT_MKNOD = ['c', '0', '0'];
