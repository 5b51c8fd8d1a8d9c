/**
 * strata gc and strata prune: garbage collection on demand (through the daemon's scheduler, so it never overlaps
 * an automatic run), why an object is kept, the collector's counters, and orphaned data.
 *
 *   strata gc [--dry-run]                  collect now; print what went (or would go) with sizes, then a summary
 *   strata gc why <type> <id>              the reference path from a root to the object (namespace from -n)
 *   strata gc metrics                      runs, pause times, removed objects and bytes since the daemon started
 *   strata prune [--dry-run]               data without records (removed unless --dry-run) and records without data
 */
import type {
  CollectResponse,
  MetricsResponse,
  Object as ObjectPb,
  PruneResponse,
  WhyResponse,
} from '../api/gen/strata/services/gc/v1/gc.js';
import { bool, CliError, str, type Command, type Invocation } from './command.js';
import { humanSize, isoOrNull, printJson, rfc3339, table, write } from './output.js';

const TYPE_NAMES: Record<string, string> = {
  content: 'content',
  blob: 'content',
  ingest: 'ingest',
  ingests: 'ingest',
  snapshot: 'snapshot',
  snapshots: 'snapshot',
  image: 'image',
  images: 'image',
  lease: 'lease',
  leases: 'lease',
  container: 'container',
  containers: 'container',
};

const TABLE = { minwidth: 4, tabwidth: 8, padding: 2 } as const;

/** "content sha256:…", "snapshot overlayfs/<key>", "image <name>"; the namespace in brackets when it is not `ns`. */
export function formatObject(o: ObjectPb | undefined, ns?: string): string {
  if (!o) return '?';
  const id = o.type === 'snapshot' ? `${o.snapshotter}/${o.id}` : o.id;
  return `${o.type} ${id}${ns !== undefined && o.namespace && o.namespace !== ns ? ` [${o.namespace}]` : ''}`;
}

const objectId = (o: ObjectPb) => (o.type === 'snapshot' ? `${o.snapshotter}/${o.id}` : o.id);

const ms = (x: number) => `${x < 10 ? x.toFixed(2) : x.toFixed(1)} ms`;

const objectJson = (o: ObjectPb | undefined) =>
  o ? { type: o.type, namespace: o.namespace, ...(o.snapshotter ? { snapshotter: o.snapshotter } : {}), id: o.id, size: o.size } : null;

async function collect({ values, session }: Invocation): Promise<number> {
  const dryRun = bool(values, 'dry-run');
  const c = await session.connect();
  const r: CollectResponse = await c.call(c.gc, c.gc.collect, { dryRun });
  if (session.json) {
    await printJson({
      dryRun: r.dryRun,
      pauseMs: r.pauseMs,
      elapsedMs: r.elapsedMs,
      removed: r.removed.map(objectJson),
      expiredLeases: r.expiredLeases.map(objectJson),
      errors: r.errors.map((e) => ({ object: objectJson(e.object), error: e.error })),
    });
    return r.errors.length > 0 ? 1 : 0;
  }
  const expired = new Set(r.expiredLeases.map((l) => `${l.namespace}\0${l.id}`));
  const rows = r.removed.map((o) => [
    o.type,
    o.namespace || '-',
    objectId(o) + (o.type === 'lease' && expired.has(`${o.namespace}\0${o.id}`) ? ' (expired)' : ''),
    o.size > 0 ? humanSize(o.size) : '-',
  ]);
  // Expired leases the collector did not list among the removed objects.
  const listed = new Set(r.removed.filter((o) => o.type === 'lease').map((o) => `${o.namespace}\0${o.id}`));
  for (const l of r.expiredLeases) if (!listed.has(`${l.namespace}\0${l.id}`)) rows.push(['lease', l.namespace || '-', `${l.id} (expired)`, '-']);
  if (rows.length > 0) await write(table([['TYPE', 'NAMESPACE', 'ID', 'SIZE'], ...rows], TABLE));
  const bytes = r.removed.reduce((a, o) => a + o.size, 0);
  const n = rows.length;
  const objects = `${n} object${n === 1 ? '' : 's'}`;
  await write(
    r.dryRun
      ? `would remove ${objects}, ${humanSize(bytes)} (dry run), pause ${ms(r.pauseMs)}\n`
      : `removed ${objects}, ${humanSize(bytes)} freed, pause ${ms(r.pauseMs)}\n`,
  );
  for (const e of r.errors) process.stderr.write(`strata: could not remove ${formatObject(e.object)}: ${e.error}\n`);
  if (r.errors.length > 0) {
    process.stderr.write(`strata: ${r.errors.length} object(s) kept their data; \`strata prune\` removes such leftovers\n`);
    return 1;
  }
  return 0;
}

async function why({ args, values, session }: Invocation): Promise<number> {
  const [typeArg, idArg, ...extra] = args.slice(1);
  if (!typeArg || !idArg || extra.length > 0) throw new CliError('usage: strata gc why <type> <id> (e.g. content sha256:..., snapshot overlayfs/<key>, image <name>)');
  const type = TYPE_NAMES[typeArg];
  if (!type) throw new CliError(`unknown object type "${typeArg}" (content, ingest, snapshot, image, lease, container)`);
  const ns = session.globals.namespace;
  const object: ObjectPb = { type, namespace: ns, snapshotter: '', id: idArg, size: 0 };
  if (type === 'snapshot') {
    const sn = str(values, 'snapshotter');
    if (sn) object.snapshotter = sn;
    else {
      const slash = idArg.indexOf('/');
      if (slash <= 0 || slash === idArg.length - 1) throw new CliError('a snapshot is named <snapshotter>/<key> (or give --snapshotter)');
      object.snapshotter = idArg.slice(0, slash);
      object.id = idArg.slice(slash + 1);
    }
  }
  const c = await session.connect();
  const w: WhyResponse = await c.call(c.gc, c.gc.why, { object });
  if (session.json) {
    await printJson({
      object: objectJson(object),
      reachable: w.reachable,
      root: w.root || null,
      path: w.path.map((e) => ({ from: objectJson(e.from), to: objectJson(e.to), reason: e.reason })),
    });
    return 0;
  }
  if (!w.reachable) {
    await write('not referenced: would be removed\n');
    return 0;
  }
  const lines: string[] = [];
  if (w.path.length === 0) lines.push(`${formatObject(object, ns)} is a root (${w.root || 'root'})`);
  else {
    lines.push(`root: ${formatObject(w.path[0]!.from, ns)} (${w.root || 'root'})`);
    for (const e of w.path) lines.push(`${formatObject(e.from, ns)} -> ${formatObject(e.to, ns)} (${e.reason})`);
  }
  await write(lines.join('\n') + '\n');
  return 0;
}

async function metrics({ session }: Invocation): Promise<number> {
  const c = await session.connect();
  const m: MetricsResponse = await c.call(c.gc, c.gc.metrics, {});
  if (session.json) {
    await printJson({ ...m, lastRunAt: isoOrNull(m.lastRunAt) });
    return 0;
  }
  const rows: string[][] = [
    ['runs', String(m.runs)],
    ['pause total', ms(m.pauseMsTotal)],
    ['pause last', m.runs > 0 ? ms(m.pauseMsLast) : '-'],
    ['pause mean', m.runs > 0 ? ms(m.pauseMsTotal / m.runs) : '-'],
    ['last run', m.lastRunAt ? rfc3339(m.lastRunAt) : '-'],
    ['removed bytes', humanSize(m.removedBytes)],
  ];
  for (const [type, n] of Object.entries(m.removedObjects).sort(([a], [b]) => a.localeCompare(b))) rows.push([`removed ${type}`, String(n)]);
  await write(table(rows, TABLE));
  return 0;
}

export const gc: Command = {
  name: 'gc',
  usage: '[--dry-run] | why <type> <id> | metrics',
  summary: 'collect garbage now (--dry-run: only list it); `why <type> <id>`: what keeps an object; `metrics`: counters',
  options: { 'dry-run': { type: 'boolean' }, snapshotter: { type: 'string' } },
  run(inv) {
    const sub = inv.args[0];
    if (sub === undefined) return collect(inv);
    if (sub === 'why') return why(inv);
    if (sub === 'metrics') {
      if (inv.args.length > 1) throw new CliError('gc metrics takes no arguments');
      return metrics(inv);
    }
    throw new CliError(`unknown command "gc ${sub}" (strata gc [--dry-run] | why <type> <id> | metrics)`);
  },
};

const KINDS: { key: keyof PruneResponse; label: string; removable: boolean }[] = [
  { key: 'blobs', label: 'blob', removable: true },
  { key: 'ingests', label: 'ingest', removable: true },
  { key: 'snapshots', label: 'snapshot', removable: true },
  { key: 'contentWithoutData', label: 'content without data', removable: false },
  { key: 'snapshotsWithoutData', label: 'snapshot without data', removable: false },
];

export const prune: Command = {
  name: 'prune',
  usage: '[--dry-run]',
  summary: 'find data without records (removed unless --dry-run) and records whose data is missing (reported)',
  options: { 'dry-run': { type: 'boolean' } },
  async run({ args, values, session }) {
    if (args.length > 0) throw new CliError('prune takes no arguments');
    const dryRun = bool(values, 'dry-run');
    const c = await session.connect();
    const r: PruneResponse = await c.call(c.gc, c.gc.prune, { dryRun });
    if (session.json) {
      const out: Record<string, unknown> = { dryRun };
      for (const k of KINDS) out[k.key] = r[k.key].map(objectJson);
      return printJson(out);
    }
    const rows: string[][] = [];
    for (const k of KINDS) {
      for (const o of r[k.key]) {
        const id = k.removable ? objectId(o) : `${objectId(o)} [${o.namespace}]`;
        rows.push([k.label, id, o.size > 0 ? humanSize(o.size) : '-']);
      }
    }
    if (rows.length > 0) await write(table([['KIND', 'ID', 'SIZE'], ...rows], TABLE));
    const orphans = KINDS.filter((k) => k.removable).flatMap((k) => r[k.key]);
    const bytes = orphans.reduce((a, o) => a + o.size, 0);
    const records = r.contentWithoutData.length + r.snapshotsWithoutData.length;
    const n = orphans.length;
    const what = `${n} orphaned item${n === 1 ? '' : 's'} of data`;
    const lines = [dryRun ? `would remove ${what}, ${humanSize(bytes)} (dry run)` : `removed ${what}, ${humanSize(bytes)} freed`];
    if (records > 0) lines.push(`${records} record${records === 1 ? '' : 's'} without data (kept; remove them with their own commands)`);
    await write(lines.join('\n') + '\n');
  },
};
