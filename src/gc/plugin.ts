/**
 * The io.containerd.gc.v1.scheduler plugin: the metadata collector behind containerd's scheduler rules, fed by
 * the metadata store's mutation hook. Its instance is the Scheduler (its `collector` answers dry runs, why and
 * prune); the leases and images services use it for synchronous deletes, the GC service for everything.
 */
import { PluginType, register } from '../plugin/index.js';
import { MetadataCollector, type GCPluginMetadata } from './index.js';
import { Scheduler, schedulerDefaults, type SchedulerConfig } from './scheduler.js';

register<Scheduler, SchedulerConfig>({
  type: PluginType.GC,
  id: 'scheduler',
  requires: [PluginType.Metadata],
  config: schedulerDefaults,
  init: (ic) => {
    // Typed by what GC needs of it (src/metadata's MetadataStore implements GCPluginMetadata): gc never imports metadata.
    const md = ic.get<GCPluginMetadata>(PluginType.Metadata, 'sqlite');
    const collector = new MetadataCollector(md, { log: ic.log });
    const scheduler = new Scheduler(collector, ic.config, { log: ic.log, nextExpiry: () => md.leases.nextExpiry() });
    const unsubscribe = md.onMutation((deletion) => scheduler.mutated(deletion));
    const s = scheduler.settings;
    Object.assign(ic.meta.exports, {
      PauseThreshold: String(s.pauseThreshold),
      DeletionThreshold: String(s.deletionThreshold),
      MutationThreshold: String(s.mutationThreshold),
      ScheduleDelay: ic.config.schedule_delay,
      StartupDelay: ic.config.startup_delay,
    });
    ic.onClose(async () => {
      unsubscribe();
      await scheduler.close();
    });
    return scheduler;
  },
});
