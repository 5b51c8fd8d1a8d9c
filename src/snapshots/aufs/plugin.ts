/**
 * The aufs snapshotter's plugin (io.containerd.snapshotter.v1.aufs): registration and host detection only,
 * the backend comes later. As containerd's (an external plugin there), it needs aufs in the kernel: listed in
 * /proc/filesystems, after trying `modprobe aufs` when it is not; otherwise it is skipped.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { Logger } from '../../log/index.js';
import { PluginType, register, SkipPlugin } from '../../plugin/index.js';

const run = promisify(execFile);

/** Whether a /proc/filesystems text lists aufs (as its own entry, not as part of another name). */
export function listsAufs(text: string): boolean {
  return text.split('\n').some((l) => l.trim().split(/\s+/).pop() === 'aufs');
}

/** Throws SkipPlugin with the reason aufs cannot be used (always, until the backend exists). */
export async function checkAufs(procFilesystems = '/proc/filesystems', log?: Logger): Promise<never> {
  const listed = async () => listsAufs(await readFile(procFilesystems, 'utf8').catch(() => ''));
  let supported = await listed();
  if (!supported) {
    try {
      await run('modprobe', ['aufs']);
      supported = await listed();
    } catch (err) {
      const e = err as { code?: unknown; stderr?: string; message: string };
      log?.debug('modprobe aufs failed', { error: e.code === 'ENOENT' ? 'modprobe not found' : (e.stderr || e.message).trim() });
    }
  }
  if (!supported) throw new SkipPlugin(`aufs is not supported: not listed in ${procFilesystems}`);
  throw new SkipPlugin('aufs snapshotter is not implemented yet');
}

register<never, Record<string, never>>({
  type: PluginType.Snapshot,
  id: 'aufs',
  init: (ic) => checkAufs('/proc/filesystems', ic.log),
});
