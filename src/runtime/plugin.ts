/**
 * The task runtime plugin (io.containerd.runtime.v2.task): tasks on runc, each watched by its own monitor
 * process, bundles under <state>/io.containerd.runtime.v2.task/<namespace>/<id>. On start it finds the tasks
 * of a previous run (docs/runtime.md).
 * Container records (spec, snapshot, runtime) come from the metadata containers store.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { PluginType, SkipPlugin, register } from '../plugin/index.js';
import type { MetadataStore } from '../metadata/index.js';
import type { EventPublisher } from '../events/types.js';
import { TaskManager } from './tasks.js';

export interface RuntimeConfig extends Record<string, unknown> {
  /** The runc binary. */
  runc: string;
  /** runc's state root (default <state>/runc); each namespace gets a directory in it. */
  runc_root: string;
  /** runc's systemd cgroup driver. */
  systemd_cgroup: boolean;
}

register<TaskManager, RuntimeConfig>({
  type: PluginType.Runtime,
  id: 'task',
  requires: [PluginType.Metadata, PluginType.Event],
  config: () => ({ runc: 'runc', runc_root: '', systemd_cgroup: false }),
  init: async (ic) => {
    if (process.platform !== 'linux') throw new SkipPlugin('tasks need Linux');
    const probe = spawnSync(ic.config.runc, ['--version'], { encoding: 'utf8' });
    if (probe.error || probe.status !== 0) throw new SkipPlugin(`runc binary ${JSON.stringify(ic.config.runc)} not usable`);
    const md = ic.get<MetadataStore>(PluginType.Metadata, 'sqlite');
    const events = ic.get<EventPublisher>(PluginType.Event, 'exchange');
    const mgr = new TaskManager({
      root: ic.state,
      runcRoot: ic.config.runc_root || join(ic.daemonState, 'runc'),
      runc: ic.config.runc,
      systemdCgroup: ic.config.systemd_cgroup,
      containers: (ctx, id) => md.containers.bind(ctx).get(id),
      snapshotters: (ctx, name) => md.snapshotters.get(name)?.bind(ctx),
      events,
      log: ic.log,
    });
    await mgr.recover();
    ic.onClose(() => mgr.close());
    ic.meta.exports.root = ic.state;
    return mgr;
  },
});
