/**
 * strata fsck [--config FILE] [--root DIR] [--state DIR] [--address SOCK] [--repair] [--json]
 *
 * Runs offline, on a stopped daemon's root (docs/fsck.md): the config is read as stratad reads it (built-in
 * defaults, the file, then the flags). Exit status: 0 when no violation remains (with --repair: every one was
 * repaired), 1 when violations remain, 2 when fsck could not run (usage, a daemon serving the root, an error).
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/index.js';
import { formatReport, fsck, remainingViolations } from '../fsck/index.js';

const USAGE = `usage: strata fsck [--config FILE] [--root DIR] [--state DIR] [--address SOCK] [--repair] [--json]

Checks a stopped daemon's stores: blob digests, records against data (content, ingests, snapshots and their
directories), mounts left behind, lease resources, labels, SQLite integrity. --repair fixes the violations
(docs/fsck.md); garbage is reported and left to the garbage collector.
Exit status: 0 no violation left, 1 violations left, 2 could not run.
`;

export const FSCK_SUMMARY = 'check (and with --repair, fix) a stopped daemon\'s stores';

export async function fsckMain(argv: string[], out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        config: { type: 'string', short: 'c' },
        root: { type: 'string' },
        state: { type: 'string' },
        address: { type: 'string', short: 'a' },
        repair: { type: 'boolean' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
      strict: true,
    }));
  } catch (e) {
    err.write(`strata fsck: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help === true) {
    out.write(USAGE);
    return 0;
  }
  const repair = values.repair === true;
  try {
    const config = loadConfig(values.config as string | undefined, {
      ...(typeof values.root === 'string' ? { root: values.root } : {}),
      ...(typeof values.state === 'string' ? { state: values.state } : {}),
      ...(typeof values.address === 'string' ? { address: values.address } : {}),
    });
    const report = await fsck({ config, repair });
    out.write(values.json === true ? JSON.stringify(report, null, 2) + '\n' : formatReport(report, repair));
    return remainingViolations(report) > 0 ? 1 : 0;
  } catch (e) {
    err.write(`strata fsck: ${e instanceof Error ? e.message : String(e)}\n`);
    return 2;
  }
}
