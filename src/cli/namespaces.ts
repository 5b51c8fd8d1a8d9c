/** strata namespaces (ns): ls, create, rm, label. */
import { isNotFound } from '../core/errdefs.js';
import { bool, CliError, labelArgs, type Group } from './command.js';
import { formatLabels, printJson, printLines, table, write } from './output.js';

export const namespaces: Group = {
  name: 'namespaces',
  aliases: ['namespace', 'ns'],
  summary: 'manage namespaces',
  commands: [
    {
      name: 'ls',
      aliases: ['list'],
      summary: 'list namespaces',
      options: { quiet: { type: 'boolean', short: 'q' } },
      async run({ values, session }) {
        const c = await session.connect();
        const { namespaces: list } = await c.call(c.namespaces, c.namespaces.list, { filter: '' });
        if (session.json) return printJson(list.map((n) => ({ name: n.name, labels: n.labels })));
        if (bool(values, 'quiet')) return printLines(list.map((n) => n.name));
        await write(table([['NAME', 'LABELS'], ...list.map((n) => [n.name, formatLabels(n.labels)])], { terminated: true }));
      },
    },
    {
      name: 'create',
      aliases: ['c'],
      usage: '<name> [<key>=<value>...]',
      summary: 'create a new namespace (it must be unique)',
      async run({ args, session }) {
        const [name, ...rest] = args;
        if (!name) throw new CliError('please specify a namespace');
        const c = await session.connect();
        await c.call(c.namespaces, c.namespaces.create, { namespace: { name, labels: labelArgs(rest) } });
      },
    },
    {
      name: 'rm',
      aliases: ['remove'],
      usage: '<name>...',
      summary: 'remove one or more namespaces (each must be empty)',
      async run({ args, session }) {
        const c = await session.connect();
        let failed = false;
        for (const name of args) {
          try {
            await c.call(c.namespaces, c.namespaces.delete, { name });
          } catch (err) {
            // As in ctr, removing a namespace that does not exist is not an error.
            if (!isNotFound(err)) {
              failed = true;
              process.stderr.write(`strata: unable to delete ${name}: ${(err as Error).message}\n`);
              continue;
            }
          }
          await write(`${name}\n`);
        }
        return failed ? 1 : 0;
      },
    },
    {
      name: 'label',
      usage: '<name> [<key>=<value>...]',
      summary: 'set and clear labels for a namespace (an empty value clears the label)',
      async run({ args, session }) {
        const [name, ...rest] = args;
        if (!name) throw new CliError('please specify a namespace');
        const labels = labelArgs(rest);
        const keys = Object.keys(labels);
        if (keys.length === 0) return;
        const c = await session.connect();
        await c.call(c.namespaces, c.namespaces.update, {
          namespace: { name, labels },
          updateMask: keys.map((k) => `labels.${k}`),
        });
      },
    },
  ],
};
