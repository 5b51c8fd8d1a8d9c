/**
 * The table of strata's commands for main.ts: names and aliases, and how to load each command's module.
 */
import type { Command, Group } from './command.js';

/**
 * The commands by name and alias, each loaded when it is used: a command line loads only the module of its own
 * command (and what that imports), not those of the others (`strata image pull` and `strata run` start faster;
 * bench/RESULTS.md "Lazy pull"). Help loads them all. The names and aliases here must match the modules' own
 * (test/cli/entries.test.ts checks it).
 */
export const ENTRY_MODULES: { names: string[]; load: () => Promise<Group | Command> }[] = [
  { names: ['namespaces', 'namespace', 'ns'], load: async () => (await import('./namespaces.js')).namespaces },
  { names: ['content'], load: async () => (await import('./content.js')).content },
  { names: ['images', 'image', 'i'], load: async () => (await import('./images.js')).images },
  { names: ['containers', 'container', 'c'], load: async () => (await import('./containers.js')).containers },
  { names: ['run'], load: async () => (await import('./run.js')).run },
  { names: ['tasks', 'task', 't'], load: async () => (await import('./tasks.js')).tasks },
  { names: ['leases', 'lease'], load: async () => (await import('./leases.js')).leases },
  { names: ['snapshots', 'snapshot'], load: async () => (await import('./snapshots.js')).snapshots },
  { names: ['du'], load: async () => (await import('./du.js')).du },
  { names: ['gc'], load: async () => (await import('./gc.js')).gc },
  { names: ['prune'], load: async () => (await import('./gc.js')).prune },
  { names: ['plugins', 'plugin'], load: async () => (await import('./plugins.js')).plugins },
  { names: ['debug'], load: async () => (await import('./debug.js')).debug },
  { names: ['version'], load: async () => (await import('./version.js')).version },
];

