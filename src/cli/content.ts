/** strata content: ls, get, ingest, active, rm, label. */
import { parseDigest } from '../content/digest.js';
import { isNotFound } from '../core/errdefs.js';
import { bool, CliError, labelArgs, str, type Group } from './command.js';
import { age, formatLabels, humanSize, isoOrNull, printJson, printLines, table, write } from './output.js';

export const content: Group = {
  name: 'content',
  summary: 'manage content',
  commands: [
    {
      name: 'ls',
      aliases: ['list'],
      usage: '[<filter>...]',
      summary: 'list all blobs in the store',
      options: { quiet: { type: 'boolean', short: 'q' } },
      async run({ args, values, session }) {
        const c = await session.connect();
        const infos = (await c.collect(c.content.list({ filters: args }, c.metadata()))).flatMap((r) => r.info);
        if (session.json) {
          return printJson(
            infos.map((i) => ({
              digest: i.digest,
              size: i.size,
              createdAt: isoOrNull(i.createdAt),
              updatedAt: isoOrNull(i.updatedAt),
              labels: i.labels,
            })),
          );
        }
        if (bool(values, 'quiet')) return printLines(infos.map((i) => i.digest));
        const rows = infos.map((i) => [i.digest, humanSize(i.size), age(i.createdAt), formatLabels(i.labels, '-')]);
        await write(table([['DIGEST', 'SIZE', 'AGE', 'LABELS'], ...rows], { padchar: '\t' }));
      },
    },
    {
      name: 'get',
      usage: '<digest>',
      summary: 'write the data of a blob to stdout',
      async run({ args, session }) {
        const digest = digestArg(args[0]);
        const c = await session.connect();
        for await (const chunk of c.readBlob(digest)) await write(chunk);
      },
    },
    {
      name: 'ingest',
      usage: '[--expected-digest <digest>] [--expected-size <n>] <ref>',
      summary: 'write stdin into the store under an ingest ref (resumes a partial ingest of that ref)',
      options: { 'expected-digest': { type: 'string' }, 'expected-size': { type: 'string' } },
      async run({ args, values, session }) {
        const ref = args[0];
        const expected = str(values, 'expected-digest');
        if (expected) parseDigest(expected);
        const sizeArg = str(values, 'expected-size');
        let total = 0;
        if (sizeArg !== undefined) {
          total = Number(sizeArg);
          if (!/^\d+$/.test(sizeArg) || !Number.isSafeInteger(total)) throw new CliError(`invalid expected size "${sizeArg}"`);
        }
        if (!ref) throw new CliError('must specify a transaction reference');
        const c = await session.connect();
        await c.writeBlob(process.stdin, { ref, expected: expected || undefined, total });
      },
    },
    {
      name: 'active',
      usage: '[<filter>...]',
      summary: 'display active (uncommitted) ingests',
      async run({ args, session }) {
        const c = await session.connect();
        const { statuses } = await c.call(c.content, c.content.listStatuses, { filters: args });
        if (session.json) {
          return printJson(
            statuses.map((s) => ({
              ref: s.ref,
              offset: s.offset,
              total: s.total,
              expected: s.expected,
              startedAt: isoOrNull(s.startedAt),
              updatedAt: isoOrNull(s.updatedAt),
            })),
          );
        }
        const rows = statuses.map((s) => [s.ref, humanSize(s.offset), age(s.startedAt)]);
        await write(table([['REF', 'SIZE', 'AGE'], ...rows], { padchar: '\t', terminated: true }));
      },
    },
    {
      name: 'rm',
      aliases: ['delete', 'del', 'remove'],
      usage: '<digest>...',
      summary: 'permanently delete blobs (prints each one deleted)',
      async run({ args, session }) {
        const c = await session.connect();
        let failed = false;
        for (const arg of args) {
          try {
            const digest = digestArg(arg);
            await c.call(c.content, c.content.delete, { digest });
            await write(`${digest}\n`);
          } catch (err) {
            // As in ctr, a blob that is already gone is skipped silently.
            if (isNotFound(err)) continue;
            failed = true;
            process.stderr.write(`strata: could not delete ${arg}: ${(err as Error).message}\n`);
          }
        }
        return failed ? 1 : 0;
      },
    },
    {
      name: 'label',
      usage: '<digest> [<key>=<value>...]',
      summary: 'set and clear labels of a blob (an empty value clears the label); prints the labels',
      async run({ args, session }) {
        const [first, ...rest] = args;
        const digest = digestArg(first);
        const labels = labelArgs(rest);
        const keys = Object.keys(labels);
        const c = await session.connect();
        let info;
        if (keys.length === 0) {
          ({ info } = await c.call(c.content, c.content.info, { digest }));
        } else {
          const set = Object.fromEntries(Object.entries(labels).filter(([, v]) => v !== ''));
          ({ info } = await c.call(c.content, c.content.update, {
            info: { digest, size: 0, createdAt: undefined, updatedAt: undefined, labels: set },
            updateMask: keys.map((k) => `labels.${k}`),
          }));
        }
        await write(`${formatLabels(info?.labels)}\n`);
      },
    },
  ],
};

function digestArg(arg: string | undefined): string {
  if (!arg) throw new CliError('please specify a digest');
  parseDigest(arg);
  return arg;
}
