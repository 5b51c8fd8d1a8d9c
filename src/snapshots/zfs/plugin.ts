/**
 * The zfs snapshotter's plugin (io.containerd.snapshotter.v1.zfs): registration and host detection only, the
 * backend comes later. As containerd's (an external plugin there), it runs only when its root is on a zfs
 * filesystem; otherwise it is skipped, saying also whether the zfs kernel module is loaded at all.
 */
import { access } from 'node:fs/promises';
import { PluginType, register, SkipPlugin } from '../../plugin/index.js';
import { lookupMount } from '../btrfs/mountinfo.js';

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/** Throws SkipPlugin with the reason zfs cannot serve root (always, until the backend exists). */
export async function checkZfs(root: string, sysModule = '/sys/module/zfs'): Promise<never> {
  const m = await lookupMount(root);
  const loaded = await exists(sysModule);
  if (m.fstype !== 'zfs') {
    const why = [`it is on ${m.fstype}`];
    if (!loaded) why.push(`the zfs kernel module is not loaded: no ${sysModule}`);
    throw new SkipPlugin(`path ${root} must be a zfs filesystem to be used with the zfs snapshotter (${why.join('; ')})`);
  }
  throw new SkipPlugin(`zfs snapshotter is not implemented yet (${root} is on zfs dataset ${m.source})`);
}

register<never, Record<string, never>>({
  type: PluginType.Snapshot,
  id: 'zfs',
  init: async (ic) => {
    ic.meta.exports.root = ic.root;
    return checkZfs(ic.root);
  },
});
