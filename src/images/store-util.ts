/** Small operations on an ImageStore that pull, import and unpack share. */
import { isAlreadyExists } from '../core/errdefs.js';
import type { Image, ImageStore } from '../metadata/images.js';
import type { Descriptor } from '../core/descriptor.js';

/** Creates the image, or points an existing one at `target` (containerd's pull and import do the same). */
export async function createOrUpdateImage(
  images: ImageStore,
  name: string,
  target: Descriptor,
  labels: Record<string, string> = {},
): Promise<Image> {
  try {
    return await images.create({ name, target, labels });
  } catch (err) {
    if (!isAlreadyExists(err)) throw err;
    const paths = ['target', ...Object.keys(labels).map((k) => `labels.${k}`)];
    return images.update({ name, target, labels }, paths);
  }
}
