/** Small operations on an ImageStore that pull, import and unpack share. */
import { isAlreadyExists } from '../errdefs/index.js';
import type { Descriptor, Image, ImageStore } from './types.js';

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
