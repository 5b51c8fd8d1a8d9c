/** strata plugins (plugin): ls. */
import type { Plugin } from '../api/gen/containerd/services/introspection/v1/introspection.js';
import type { Platform } from '../api/gen/containerd/types/platform.js';
import { bool, type Group } from './command.js';
import { printJson, printLines, table, tabwrite, write } from './output.js';

/** Go's names of the gRPC status codes, as ctr prints them. */
const CODE_NAMES = [
  'OK',
  'Canceled',
  'Unknown',
  'InvalidArgument',
  'DeadlineExceeded',
  'NotFound',
  'AlreadyExists',
  'PermissionDenied',
  'ResourceExhausted',
  'FailedPrecondition',
  'Aborted',
  'OutOfRange',
  'Unimplemented',
  'Internal',
  'Unavailable',
  'DataLoss',
  'Unauthenticated',
];
const codeName = (code: number): string => CODE_NAMES[code] ?? `Code(${code})`;

/** ok, skip or error, derived from init_err as ctr does. */
export function pluginStatus(p: Plugin): 'ok' | 'skip' | 'error' {
  if (!p.initErr) return 'ok';
  return p.initErr.message.includes('skip plugin') ? 'skip' : 'error';
}

/** containerd's platforms.Format: "os/arch[/variant]", "unknown" without an OS. */
const formatPlatform = (p: Platform): string => (p.os ? [p.os, p.architecture, p.variant].filter(Boolean).join('/') : 'unknown');

const platformList = (ps: Platform[]): string[] => [...new Set(ps.map(formatPlatform))].sort();

const TABLE = { minwidth: 4, tabwidth: 8, padding: 4 } as const;

export const plugins: Group = {
  name: 'plugins',
  aliases: ['plugin'],
  summary: 'provides information about the daemon plugins',
  commands: [
    {
      name: 'ls',
      aliases: ['list'],
      usage: '[<filter>...]',
      summary: 'list plugins',
      options: { quiet: { type: 'boolean', short: 'q' }, detailed: { type: 'boolean', short: 'd' } },
      async run({ args, values, session }) {
        const c = await session.connect();
        const { plugins: list } = await c.call(c.introspection, c.introspection.plugins, { filters: args });
        if (session.json) {
          return printJson(
            list.map((p) => ({
              type: p.type,
              id: p.id,
              requires: p.requires,
              platforms: platformList(p.platforms),
              exports: p.exports,
              capabilities: p.capabilities,
              status: pluginStatus(p),
              error: p.initErr ? { code: codeName(p.initErr.code), message: p.initErr.message } : null,
            })),
          );
        }
        if (bool(values, 'quiet')) return printLines(list.map((p) => p.id));
        if (bool(values, 'detailed')) return write(tabwrite(detailed(list), TABLE));
        const rows = list.map((p) => {
          const platforms = platformList(p.platforms);
          return [p.type, p.id, platforms.length > 0 ? platforms.join(',') : '-', pluginStatus(p)];
        });
        await write(table([['TYPE', 'ID', 'PLATFORMS', 'STATUS'], ...rows], { ...TABLE, terminated: true }));
      },
    },
  ],
};

/** The --detailed layout: one block of "Key:\t value" lines per plugin, blocks separated by a blank row. */
function detailed(list: Plugin[]): string {
  const blocks = list.map((p) => {
    const lines = [`Type:\t ${p.type}`, `ID:\t ${p.id}`];
    if (p.requires.length > 0) lines.push('Requires:\t', ...p.requires.map((r) => `\t ${r}`));
    if (p.platforms.length > 0) lines.push(`Platforms:\t ${platformList(p.platforms).join(',')}`);
    const exports = Object.entries(p.exports).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    if (exports.length > 0) lines.push('Exports:\t', ...exports.map(([k, v]) => `\t ${k} \t ${v}`));
    if (p.capabilities.length > 0) lines.push(`Capabilities:\t ${p.capabilities.join(',')}`);
    if (p.initErr) {
      lines.push('Error:\t', `\t Code:\t ${codeName(p.initErr.code)}`, `\t Message:\t ${p.initErr.message}`);
    }
    return lines.join('\n') + '\n';
  });
  return blocks.join('\t\t\t\n');
}
