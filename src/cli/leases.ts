/** strata leases: ls, create, rm. */
import { bool, CliError, labelArgs, parseDuration, str, type Group } from './command.js';
import { formatLabels, isoOrNull, printJson, printLines, rfc3339, table, write } from './output.js';
import { LABEL_GC_EXPIRE } from '../core/labels.js';

/** The label GC reads a lease's expiry from (RFC 3339). */

export const leases: Group = {
  name: 'leases',
  aliases: ['lease'],
  summary: 'manage leases',
  commands: [
    {
      name: 'ls',
      aliases: ['list'],
      usage: '[<filter>...]',
      summary: 'list all active leases',
      options: { quiet: { type: 'boolean', short: 'q' } },
      async run({ args, values, session }) {
        const c = await session.connect();
        const { leases: list } = await c.call(c.leases, c.leases.list, { filters: args });
        if (session.json) {
          return printJson(list.map((l) => ({ id: l.id, createdAt: isoOrNull(l.createdAt), labels: l.labels })));
        }
        if (bool(values, 'quiet')) return printLines(list.map((l) => l.id));
        const rows = list.map((l) => [l.id, l.createdAt ? rfc3339(l.createdAt) : '-', formatLabels(l.labels, '-')]);
        await write(table([['ID', 'CREATED AT', 'LABELS'], ...rows], { terminated: true }));
      },
    },
    {
      name: 'create',
      usage: '[--id <id>] [--expires <duration>] [<key>=<value>...]',
      summary: 'create a lease and print its id (--expires defaults to 24h as in ctr; 0 never expires)',
      options: { id: { type: 'string' }, expires: { type: 'string', short: 'x' } },
      async run({ args, values, session }) {
        const labels = labelArgs(args, '');
        const expires = parseDuration(str(values, 'expires') ?? '24h');
        if (expires > 0) labels[LABEL_GC_EXPIRE] = rfc3339(new Date(Date.now() + expires));
        const c = await session.connect();
        const { lease } = await c.call(c.leases, c.leases.create, { id: str(values, 'id') ?? '', labels });
        await write(`${lease?.id ?? ''}\n`);
      },
    },
    {
      name: 'rm',
      aliases: ['delete', 'del', 'remove'],
      usage: '[--sync] <id>...',
      summary: 'delete leases (--sync: wait until what they held is collected)',
      options: { sync: { type: 'boolean' } },
      async run({ args, values, session }) {
        if (args.length === 0) throw new CliError('please specify a lease id');
        const c = await session.connect();
        const sync = bool(values, 'sync');
        for (const [i, id] of args.entries()) {
          // As in ctr, only the last delete waits for collection: one pass covers them all.
          await c.call(c.leases, c.leases.delete, { id, sync: sync && i === args.length - 1 });
          await write(`${id}\n`);
        }
      },
    },
  ],
};
