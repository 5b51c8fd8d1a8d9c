/**
 * fsck: checks, with the daemon stopped, every invariant the stores promise (docs/fsck.md), and with `repair`
 * fixes what broke without deleting data a record still needs.
 *
 * Two kinds of findings:
 *  - violations: a broken invariant (a record whose data is gone, a blob whose bytes do not match its digest, a
 *    mount left behind, a lease naming nothing, a label that does not parse...). Normal operation and crashes
 *    never leave one; disk faults and hands in the root do.
 *  - garbage: data no record accounts for (orphan blobs, ingest directories without a record, backend snapshots
 *    without a namespaced record, a trash a crash left...). Crashes leave these by design; a collection (or
 *    `strata prune`) removes them. fsck reports them and leaves them alone.
 *
 * Layout read (the daemon's, from the config): <root>/io.containerd.metadata.v1.sqlite/meta.db, the content
 * store in <root>/io.containerd.content.v1.content, and each enabled local snapshotter (overlayfs, native,
 * btrfs) in its plugin directory or `root_path`.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, lstatSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { copyFile, mkdir, rename, unlink, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import type { Config } from '../config/index.js';
import { silentLogger, type Logger } from '../log/index.js';
import { isDigestAlgorithm, isValidHex, parseDigest } from '../content/digest.js';
import { MetadataCheck, type LabelledTable } from '../metadata/fsck.js';
import { SnapshotStorage } from '../snapshots/storage.js';
import { parseMountInfo } from '../snapshots/btrfs/mountinfo.js';
import { FS_NAME as LAZYFS_FS_NAME } from '../snapshots/stargz/protocol.js';
import { refuseIfServed } from './offline.js';
import { notFound, StrataError } from '../core/errdefs.js';
import { validateLabelEntries } from '../core/labels.js';

export interface FsckOptions {
  /** The daemon's own config (root, state, address, plugins' config). */
  config: Config;
  repair: boolean;
  log?: Logger;
}

export interface FsckFinding {
  /** A stable kebab-case name, e.g. 'blob-digest-mismatch'. */
  kind: string;
  /** What it is about, e.g. 'content default/sha256:..', 'snapshot overlayfs default/key'. */
  object: string;
  /** One sentence; paths only relative to the root. */
  detail: string;
  /** With repair: what was done. */
  repaired?: string;
}

export interface FsckReport {
  violations: FsckFinding[];
  garbage: FsckFinding[];
  checked: Record<string, number>;
}

const execFileP = promisify(execFile);

const METADATA_URI = 'io.containerd.metadata.v1.sqlite';
const CONTENT_URI = 'io.containerd.content.v1.content';
/** The snapshotters whose backends keep their own records in a SnapshotStorage file, and their layouts. */
const LOCAL_SNAPSHOTTERS = ['overlayfs', 'native', 'btrfs'] as const;
type LocalSnapshotter = (typeof LOCAL_SNAPSHOTTERS)[number];
const snapshotterUri = (name: string) => `io.containerd.snapshotter.v1.${name}`;

/** Where each kind of backend snapshot keeps its data, relative to the backend's root. */
function dataDir(sn: LocalSnapshotter, id: number, kind: string): string {
  if (sn === 'btrfs') return join(kind === 'active' ? 'active' : kind === 'view' ? 'view' : 'snapshots', String(id));
  return join('snapshots', String(id));
}

/** The root a path is named relative to in findings; never an absolute host path. */
class Namer {
  constructor(private readonly root: string) {}
  rel(p: string): string {
    const r = relative(this.root, p);
    return r.startsWith('..') ? `<outside the root>/${p.split('/').slice(-3).join('/')}` : r || '.';
  }
}

/** Labels as fsck accepts them: a JSON object of strings, each label within containerd's rule. */
function labelProblem(text: string): string | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return 'the stored labels are not valid JSON';
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'the stored labels are not a JSON object';
  for (const [k, val] of Object.entries(v as Record<string, unknown>)) {
    if (typeof val !== 'string') return `label ${JSON.stringify(k.slice(0, 40))} has a value that is not a string`;
  }
  // containerd's rule for each label (src/core/labels). Not the per-object limits: those guard writes, and a
  // config may lower them below what records written earlier hold, which breaks nothing.
  try {
    validateLabelEntries(v as Record<string, string>);
  } catch (err) {
    return `the labels break the label rules: ${err instanceof StrataError ? err.detail : String(err)}`;
  }
  return undefined;
}

/**
 * The labels that can be saved from a stored text that breaks the rules: every "key": "value" pair that still
 * reads (from a parsable object, or scanned out of broken JSON) and obeys the rules; the rest is dropped.
 */
function salvageLabels(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const keep = (k: unknown, v: unknown) => {
    if (typeof k !== 'string' || typeof v !== 'string' || k === '' || v === '') return;
    if (labelProblem(JSON.stringify({ [k]: v })) !== undefined) return;
    out[k] = v;
  };
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) {
      for (const [k, val] of Object.entries(v as Record<string, unknown>)) keep(k, val);
      return out;
    }
  } catch {
    // scanned below
  }
  for (const m of text.matchAll(/"((?:[^"\\]|\\.)*)"\s*:\s*"((?:[^"\\]|\\.)*)"/g)) {
    try {
      keep(JSON.parse(`"${m[1]!}"`), JSON.parse(`"${m[2]!}"`));
    } catch {
      // not a string literal after all
    }
  }
  return out;
}

async function hashFile(path: string, algorithm: string): Promise<{ digest: string; size: number }> {
  const h = createHash(algorithm);
  let size = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    h.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { digest: `${algorithm}:${h.digest('hex')}`, size };
}

/** Moves a file into <root>/lost+found/<sub>, never overwriting; returns its path relative to the root. */
async function toLostFound(root: string, path: string, sub: string): Promise<string> {
  const dir = join(root, 'lost+found', dirname(sub));
  await mkdir(dir, { recursive: true, mode: 0o700 });
  let target = join(root, 'lost+found', sub);
  for (let n = 1; existsSync(target); n++) target = join(root, 'lost+found', `${sub}.${n}`);
  try {
    await rename(path, target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await copyFile(path, target);
    await unlink(path);
  }
  return relative(root, target);
}

interface Ctx {
  root: string;
  repair: boolean;
  log: Logger;
  names: Namer;
  report: FsckReport;
  md: MetadataCheck | undefined;
  /** False when the metadata database exists but cannot be read: data cannot be called garbage then. */
  recordsKnown?: boolean;
}

/** Whether a process with this pid runs (one that another process reuses counts). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function violation(c: Ctx, f: FsckFinding): FsckFinding {
  c.report.violations.push(f);
  return f;
}
function garbage(c: Ctx, kind: string, object: string, detail: string): void {
  c.report.garbage.push({ kind, object, detail });
}
const count = (c: Ctx, what: string, n = 1) => (c.report.checked[what] = (c.report.checked[what] ?? 0) + n);

/** Runs a repair for a finding, recording what was done (or why it could not be). */
async function repair(c: Ctx, f: FsckFinding, fn: () => Promise<string> | string): Promise<void> {
  if (!c.repair) return;
  try {
    f.repaired = await fn();
    c.log.info('fsck repaired', { kind: f.kind, object: f.object, repaired: f.repaired });
  } catch (err) {
    c.log.warn('fsck repair failed', { kind: f.kind, object: f.object, error: err });
  }
}

export async function fsck(opts: FsckOptions): Promise<FsckReport> {
  const cfg = opts.config;
  const root = resolve(cfg.root);
  const log = opts.log ?? silentLogger;
  const metaPath = join(root, METADATA_URI, 'meta.db');
  const snapshotters = LOCAL_SNAPSHOTTERS.filter((n) => !cfg.disabled_plugins.includes(snapshotterUri(n)))
    .map((name) => {
      const section = cfg.plugins[snapshotterUri(name)] ?? {};
      const rootPath = name !== 'overlayfs' && typeof section.root_path === 'string' && section.root_path ? section.root_path : join(root, snapshotterUri(name));
      return { name, dir: resolve(rootPath) };
    })
    .filter((s) => existsSync(join(s.dir, 'metadata.db')));

  if (!existsSync(root)) throw notFound('the root does not exist: nothing to check');
  await refuseIfServed(cfg.grpc.address, [metaPath, ...snapshotters.map((s) => join(s.dir, 'metadata.db'))]);

  const report: FsckReport = { violations: [], garbage: [], checked: {} };
  const c: Ctx = { root, repair: opts.repair, log, names: new Namer(root), report, md: undefined };
  let unreadable = false;
  if (existsSync(metaPath)) {
    try {
      c.md = MetadataCheck.open(metaPath);
      await checkMetadataFile(c, c.md, metaPath);
    } catch (err) {
      // A database SQLite cannot read: nothing that needs its records can be judged (no blob is "unreferenced").
      c.md?.close();
      c.md = undefined;
      unreadable = true;
      violation(c, {
        kind: 'sqlite-integrity',
        object: `database ${c.names.rel(metaPath)}`,
        detail: `SQLite cannot read it (${err instanceof Error ? err.message : String(err)}); the checks that need its records were skipped`,
      });
    }
  }
  c.recordsKnown = !unreadable;
  try {
    await checkMounts(c, cfg, snapshotters.map((s) => s.dir));
    await checkContent(c, join(root, CONTENT_URI));
    const readable: typeof snapshotters = [];
    for (const s of snapshotters) {
      try {
        await checkSnapshotter(c, s.name, s.dir);
        readable.push(s);
      } catch (err) {
        violation(c, {
          kind: 'sqlite-integrity',
          object: `database ${c.names.rel(join(s.dir, 'metadata.db'))}`,
          detail: `SQLite cannot read the ${s.name} records (${err instanceof Error ? err.message : String(err)}); that snapshotter was not checked`,
        });
      }
    }
    if (c.md) {
      await checkNamespacedSnapshots(c, c.md, readable);
      await checkLeases(c, c.md, join(root, CONTENT_URI));
      await checkLabels(c, c.md);
      count(c, 'images', c.md.images().length);
    }
  } finally {
    c.md?.close();
  }
  return report;
}

async function checkMetadataFile(c: Ctx, md: MetadataCheck, path: string): Promise<void> {
  count(c, 'databases');
  const { integrity, foreignKeys } = md.checkFile();
  for (const line of integrity) {
    violation(c, { kind: 'sqlite-integrity', object: `database ${c.names.rel(path)}`, detail: `SQLite's integrity check: ${line}` });
  }
  if (foreignKeys.length === 0) return;
  for (const ns of md.missingNamespaces()) {
    const f = violation(c, { kind: 'namespace-missing', object: `namespace ${ns}`, detail: 'records of this namespace exist but the namespace record does not' });
    await repair(c, f, () => {
      md.restoreNamespace(ns);
      return 'recreated the namespace record (no labels)';
    });
  }
  for (const r of md.orphanLeaseResources()) {
    const f = violation(c, {
      kind: 'lease-resource-orphan',
      object: `lease ${r.namespace}/${r.lease} resource ${r.type} ${r.id}`,
      detail: 'a lease resource entry whose lease does not exist',
    });
    await repair(c, f, () => {
      md.deleteLeaseResource(r);
      return 'dropped the resource entry';
    });
  }
}

/** Mounts whose mount point is under the root: nothing stays mounted there once the daemon stopped. */
async function checkMounts(c: Ctx, cfg: Config, storeDirs: string[]): Promise<void> {
  let text: string;
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return;
  }
  const state = resolve(cfg.state);
  // A store may live on a file system of its own mounted at its directory (btrfs): that one is not a leftover.
  const keep = new Set([c.root, ...storeDirs, join(c.root, METADATA_URI), join(c.root, CONTENT_URI)]);
  const isKept = (mp: string) => [...keep].some((k) => k === mp || k.startsWith(mp + '/'));
  const under = (mp: string) =>
    mp.startsWith(c.root + '/') ||
    ['io.containerd.snapshotter.v1.', 'io.containerd.content.v1.'].some((p) => mp.startsWith(join(state, p)));
  // Strata's temporary mounts (src/mount withTempMount: <tmpdir>/strata-mount-*) of this root's snapshots: only those
  // whose source or overlay options name a directory under the root (other daemons' are not this root's).
  const names = (m: { root: string; options: string[]; superOptions: string[] }) =>
    m.root.startsWith(c.root + '/') || [...m.options, ...m.superOptions].some((o) => o.includes(c.root + '/'));
  const temp = (m: { mountPoint: string }) => dirname(m.mountPoint) === resolve(tmpdir()) && basename(m.mountPoint).startsWith('strata-mount-');
  // A lazily pulled layer (the stargz snapshotter) is a FUSE mount served by its lazyfs process, which outlives
  // the daemon by design (docs/lazy-pull.md): not a leftover.
  const lazyfs = (m: { fstype: string; source: string; mountPoint: string }) =>
    m.fstype.startsWith('fuse') && m.source === LAZYFS_FS_NAME && m.mountPoint.startsWith(join(c.root, snapshotterUri('stargz'), 'snapshots') + '/');
  const entries = parseMountInfo(text).filter((m) => !lazyfs(m) && ((under(m.mountPoint) && !isKept(m.mountPoint)) || (temp(m) && names(m))));
  count(c, 'mounts', entries.length);
  // Deepest first, so a repair unmounts what is on top before what is below.
  const seen = new Set<string>();
  for (const m of entries.sort((a, b) => b.mountPoint.length - a.mountPoint.length)) {
    if (seen.has(m.mountPoint)) continue;
    seen.add(m.mountPoint);
    const where = m.mountPoint.startsWith(c.root + '/')
      ? c.names.rel(m.mountPoint)
      : m.mountPoint.startsWith(state + '/')
        ? `<state>/${relative(state, m.mountPoint)}`
        : `<tmp>/${basename(m.mountPoint)}`;
    // A temporary mount of a process that died (the pid is in its name): the daemon undoes those when it starts
    // (unmountLeftovers, src/mount), so it is a crash leftover, not damage.
    const pid = temp(m) ? /^strata-mount-(\d+)-/.exec(basename(m.mountPoint))?.[1] : undefined;
    if (pid !== undefined && !processAlive(Number(pid))) {
      const g: FsckFinding = { kind: 'temp-mount-left', object: `mount ${where}`, detail: `a ${m.fstype} mount of a process that no longer runs; the daemon undoes it when it starts` };
      c.report.garbage.push(g);
      if (c.repair) {
        await execFileP('umount', ['-l', m.mountPoint]).then(
          () => (g.repaired = 'unmounted it (lazily)'),
          (err: unknown) => c.log.warn('fsck could not unmount a temporary mount', { mount: where, error: err }),
        );
      }
      continue;
    }
    const f = violation(c, { kind: 'mount-left-behind', object: `mount ${where}`, detail: `a ${m.fstype} mount is left on it while no daemon runs` });
    await repair(c, f, async () => {
      await execFileP('umount', ['-l', m.mountPoint]);
      return 'unmounted it (lazily)';
    });
  }
}

async function checkContent(c: Ctx, contentRoot: string): Promise<void> {
  const md = c.md;
  const blobsDir = join(contentRoot, 'blobs');
  const ingestDir = join(contentRoot, 'ingest');
  const records = md?.content() ?? [];
  const byDigest = new Map<string, { namespace: string; size: number }[]>();
  for (const r of records) byDigest.set(r.digest, [...(byDigest.get(r.digest) ?? []), { namespace: r.namespace, size: r.size }]);
  count(c, 'contentRecords', records.length);
  const leased = new Set((md?.leaseResources() ?? []).filter((r) => r.type === 'content').map((r) => r.id));
  const ingests = md?.ingests() ?? [];
  const adopted = new Set(ingests.filter((i) => i.sharedDigest).map((i) => i.sharedDigest!));

  // Blob files: each one's bytes hashed and compared with its name.
  const files = new Map<string, { path: string; size: number }>();
  let algs: string[] = [];
  try {
    algs = readdirSync(blobsDir);
  } catch {
    // no blobs yet
  }
  for (const alg of algs) {
    const dir = join(blobsDir, alg);
    if (!isDigestAlgorithm(alg) || !lstatSync(dir).isDirectory()) {
      garbage(c, 'stray-file', `file ${c.names.rel(dir)}`, 'not part of the content store layout; left alone');
      continue;
    }
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      const st = lstatSync(path);
      if (!isValidHex(alg, name) || !st.isFile()) {
        garbage(c, 'stray-file', `file ${c.names.rel(path)}`, 'not a blob of the content store layout; left alone');
        continue;
      }
      const digest = `${alg}:${name}`;
      count(c, 'blobs');
      const actual = await hashFile(path, alg);
      if (actual.digest !== digest) {
        const recs = byDigest.get(digest) ?? [];
        const f = violation(c, {
          kind: 'blob-digest-mismatch',
          object: `blob ${digest}`,
          detail: `its bytes hash to ${actual.digest} (${actual.size} bytes)${recs.length > 0 ? `; recorded in ${recs.map((r) => r.namespace).join(', ')}` : ''}`,
        });
        await repair(c, f, async () => {
          const moved = await toLostFound(c.root, path, join('blobs', alg, name));
          for (const r of recs) md!.deleteContent(r.namespace, digest);
          return `moved the file to ${moved}${recs.length > 0 ? ` and removed its record${recs.length > 1 ? 's' : ''} in ${recs.map((r) => r.namespace).join(', ')}` : ''}`;
        });
        continue;
      }
      files.set(digest, { path, size: actual.size });
      const recs = byDigest.get(digest) ?? [];
      for (const r of recs) {
        if (r.size === actual.size) continue;
        const f = violation(c, {
          kind: 'content-size-mismatch',
          object: `content ${r.namespace}/${digest}`,
          detail: `the record says ${r.size} bytes, the blob (whose bytes match its digest) has ${actual.size}`,
        });
        await repair(c, f, () => {
          md!.setContentSize(r.namespace, digest, actual.size);
          return `set the recorded size to ${actual.size}`;
        });
      }
      if (c.recordsKnown !== false && recs.length === 0 && !leased.has(digest) && !adopted.has(digest)) {
        garbage(c, 'blob-unreferenced', `blob ${digest}`, 'no content record, lease or ingest names it: a collection removes it');
      }
    }
  }

  // Records whose blob is gone.
  for (const r of records) {
    if (files.has(r.digest)) continue;
    let path: string;
    try {
      const { algorithm, hex } = parseDigest(r.digest);
      path = join(blobsDir, algorithm, hex);
    } catch {
      path = '';
    }
    if (path && existsSync(path)) continue; // reported above (digest mismatch)
    const f = violation(c, {
      kind: 'blob-missing',
      object: `content ${r.namespace}/${r.digest}`,
      detail: 'the record exists but its blob file does not',
    });
    await repair(c, f, () => {
      md!.deleteContent(r.namespace, r.digest);
      return 'removed the record and the lease entries naming it (fetch the content again)';
    });
  }

  // Ingests: every record's directory, every directory's record.
  count(c, 'ingests', ingests.length);
  const dirsByHash = new Map(ingests.map((i) => [createHash('sha256').update(i.backendRef, 'utf8').digest('hex'), i]));
  for (const i of ingests) {
    const dir = join(ingestDir, createHash('sha256').update(i.backendRef, 'utf8').digest('hex'));
    if (existsSync(join(dir, 'data'))) continue;
    if (i.sharedDigest) continue; // an adopting ingest has no data of its own until it is written to
    garbage(
      c,
      'ingest-without-data',
      `ingest ${i.namespace}/${i.ref}`,
      'an ingest record with no data yet (a crash before its first byte or during its commit): a writer starts it again, or a collection removes it once no lease keeps it',
    );
  }
  let names: string[] = [];
  try {
    names = readdirSync(ingestDir);
  } catch {
    // no ingests yet
  }
  for (const name of names) {
    const path = join(ingestDir, name);
    if (/^[0-9a-f]{64}$/.test(name)) {
      const rec = dirsByHash.get(name);
      if (!rec) {
        if (c.recordsKnown === false) continue;
        garbage(c, 'ingest-dir-orphan', `ingest dir ${c.names.rel(path)}`, 'an ingest directory no ingest record names: a collection removes it');
        continue;
      }
      let ref = '';
      try {
        ref = readFileSync(join(path, 'ref'), 'utf8');
      } catch {
        // checked below
      }
      if (!existsSync(join(path, 'data')) || ref === '') {
        garbage(c, 'ingest-leftover', `ingest dir ${c.names.rel(path)}`, 'an incomplete ingest directory (no data or ref): the content store removes it when it opens');
      } else if (ref !== rec.backendRef) {
        const f = violation(c, {
          kind: 'ingest-ref-mismatch',
          object: `ingest ${rec.namespace}/${rec.ref}`,
          detail: 'its directory holds the data of another ref',
        });
        await repair(c, f, async () => `moved the directory to ${await toLostFound(c.root, path, join('ingests', name))}`);
      }
    } else {
      garbage(c, 'ingest-leftover', `ingest dir ${c.names.rel(path)}`, 'a temporary or trash entry an interrupted operation left: the content store removes it when it opens');
    }
  }
}

interface BackendRow {
  id: number;
  key: string;
  parentId: number | null;
  kind: string;
  labels: string;
}

/** A backend's own records against its directories. Returns nothing: findings go to the report. */
async function checkSnapshotter(c: Ctx, name: LocalSnapshotter, dir: string): Promise<void> {
  const storage = SnapshotStorage.open(join(dir, 'metadata.db'));
  try {
    count(c, 'databases');
    for (const line of storage.checkFile()) {
      violation(c, { kind: 'sqlite-integrity', object: `database ${c.names.rel(join(dir, 'metadata.db'))}`, detail: `SQLite's check: ${line}` });
    }
    let rows: BackendRow[] = storage.checkRows();
    count(c, 'backendSnapshots', rows.length);
    const byId = new Map(rows.map((r) => [r.id, r]));

    // Labels of the backend's records.
    for (const r of rows) {
      const problem = labelProblem(r.labels);
      if (!problem) continue;
      const f = violation(c, { kind: 'label-invalid', object: `backend snapshot ${name} ${r.key}`, detail: problem });
      await repair(c, f, async () => {
        const saved = await saveLabels(c, `${name}-${r.id}`, r.labels);
        const kept = salvageLabels(r.labels);
        await storage.setLabelsText(r.id, JSON.stringify(kept));
        return `kept ${Object.keys(kept).length} readable label(s), saved the stored text to ${saved}`;
      });
    }

    // Parents and kinds inside the backend (the schema's foreign key keeps parents; their kind it does not).
    for (const r of rows) {
      if (r.parentId === null) continue;
      const p = byId.get(r.parentId);
      if (p && p.kind !== 'committed') {
        violation(c, {
          kind: 'snapshot-parent-not-committed',
          object: `backend snapshot ${name} ${r.key}`,
          detail: `its parent ${p.key} is ${p.kind}, not committed`,
        });
      }
    }

    // Every record's data directory.
    const missing: BackendRow[] = [];
    for (const r of rows) {
      const d = join(dir, dataDir(name, r.id, r.kind));
      const ok = existsSync(d) && (name !== 'overlayfs' || existsSync(join(d, 'fs')));
      if (!ok) missing.push(r);
    }
    for (const r of missing) {
      const f = violation(c, {
        kind: 'snapshot-dir-missing',
        object: `backend snapshot ${name} ${r.key}`,
        detail: `its ${r.kind} data directory ${c.names.rel(join(dir, dataDir(name, r.id, r.kind)))}${name === 'overlayfs' ? ' (or its fs/)' : ''} is missing`,
      });
      await repair(c, f, async () => {
        const dropped = await storage.dropWithDescendants([r.id]);
        const droppedSet = new Set(dropped);
        const nsRows = (c.md?.snapshots() ?? []).filter((s) => s.snapshotter === name && droppedSet.has(s.backendKey));
        const nsAll = withDescendants(c.md?.snapshots() ?? [], nsRows);
        c.md?.deleteSnapshots(nsAll);
        const below = dropped.length - 1;
        return (
          `removed the backend record${below > 0 ? ` and the ${below} below it` : ''}` +
          (nsAll.length > 0 ? `, and the snapshot record${nsAll.length > 1 ? 's' : ''} ${nsAll.map((s) => `${s.namespace}/${s.key}`).join(', ')}` : '')
        );
      });
    }
    if (c.repair && missing.length > 0) rows = storage.checkRows();
    const ids = new Set(rows.map((r) => r.id));

    // Directories no record owns.
    const kindDirs = name === 'btrfs' ? { active: 'active', view: 'view', snapshots: 'committed' } : { snapshots: '' };
    for (const [sub, kind] of Object.entries(kindDirs)) {
      let entries: string[] = [];
      try {
        entries = readdirSync(join(dir, sub));
      } catch {
        continue;
      }
      for (const e of entries) {
        const id = /^[1-9]\d*$/.test(e) ? Number(e) : NaN;
        const r = byId.get(id);
        if (ids.has(id) && (!kind || (kind === 'committed' ? r!.kind === 'committed' : r!.kind === kind))) continue;
        garbage(c, 'snapshot-dir-orphan', `dir ${c.names.rel(join(dir, sub, e))}`, `no ${name} record owns it (a crash or removal leftover): the next cleanup removes it`);
      }
    }
    if (name === 'overlayfs') {
      for (const e of safeList(join(dir, 'trash'))) {
        garbage(c, 'snapshot-trash', `dir ${c.names.rel(join(dir, 'trash', e))}`, 'a removed snapshot whose deletion did not finish: the snapshotter deletes it when it opens');
      }
      for (const e of safeList(join(dir, 'l'))) {
        const id = /^[0-9a-z]+$/.test(e) ? parseInt(e, 36) : NaN;
        if (ids.has(id) && id.toString(36) === e) continue;
        garbage(c, 'snapshot-link-orphan', `link ${c.names.rel(join(dir, 'l', e))}`, 'a layer link no record owns: the next cleanup removes it');
      }
    }
  } finally {
    storage.close();
  }
}

const safeList = (p: string): string[] => {
  try {
    return readdirSync(p);
  } catch {
    return [];
  }
};

type NsRow = ReturnType<MetadataCheck['snapshots']>[number];

/** The given namespaced records and every record below them (same namespace and snapshotter). */
function withDescendants(all: NsRow[], start: NsRow[]): NsRow[] {
  const id = (r: { namespace: string; snapshotter: string; key: string }) => `${r.snapshotter}\0${r.namespace}\0${r.key}`;
  const out = new Map(start.map((r) => [id(r), r]));
  for (let grew = true; grew; ) {
    grew = false;
    for (const r of all) {
      if (out.has(id(r)) || !r.parent) continue;
      if (out.has(id({ ...r, key: r.parent }))) {
        out.set(id(r), r);
        grew = true;
      }
    }
  }
  return [...out.values()];
}

async function saveLabels(c: Ctx, name: string, text: string): Promise<string> {
  const dir = join(c.root, 'lost+found', 'labels');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  let path = join(dir, `${name.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 120)}.txt`);
  for (let n = 1; existsSync(path); n++) path = path.replace(/(\.\d+)?\.txt$/, `.${n}.txt`);
  await writeFile(path, text, { mode: 0o600 });
  return relative(c.root, path);
}

/** Namespaced records against their backends: each names a backend snapshot of the same kind, parents agree. */
async function checkNamespacedSnapshots(c: Ctx, md: MetadataCheck, local: { name: LocalSnapshotter; dir: string }[]): Promise<void> {
  const all = md.snapshots();
  count(c, 'snapshots', all.length);
  const byKey = new Map(all.map((r) => [`${r.snapshotter}\0${r.namespace}\0${r.key}`, r]));
  const pending = new Map(md.pendingCommits().map((p) => [`${p.snapshotter}\0${p.namespace}\0${p.key}`, p]));
  const broken: { row: NsRow; f: FsckFinding }[] = [];
  for (const s of local) {
    const storage = SnapshotStorage.open(join(s.dir, 'metadata.db'));
    let rows: BackendRow[];
    try {
      rows = storage.checkRows();
    } finally {
      storage.close();
    }
    const backend = new Map(rows.map((r) => [r.key, r]));
    const backendById = new Map(rows.map((r) => [r.id, r]));
    const recorded = new Set<string>();
    for (const r of all.filter((x) => x.snapshotter === s.name)) {
      recorded.add(r.backendKey);
      const object = `snapshot ${s.name} ${r.namespace}/${r.key}`;
      const b = backend.get(r.backendKey);
      if (!b) {
        // A Commit noted (snapshot_commits) before its backend commit, killed before its record: the daemon
        // finishes it when it starts (NamespacedSnapshots.recoverCommits), so it is a leftover, not damage.
        const note = r.kind === 'active' ? pending.get(`${s.name}\0${r.namespace}\0${r.key}`) : undefined;
        const noted = note ? backend.get(note.backendKey) : undefined;
        if (note && noted?.kind === 'committed' && !byKey.has(`${s.name}\0${r.namespace}\0${note.name}`)) {
          garbage(c, 'snapshot-commit-pending', object, `a Commit to ${JSON.stringify(note.name)} was interrupted after its backend commit; the daemon finishes it when it starts`);
          recorded.add(note.backendKey);
          if (c.repair) md.finishCommit(r.namespace, s.name, r.key, note.name, note.backendKey, note.labels, note.parent);
          continue;
        }
        const done = r.kind === 'active' ? interruptedCommit(r, rows, all, byKey) : undefined;
        if (done) {
          const f = violation(c, {
            kind: 'snapshot-commit-interrupted',
            object,
            detail: `its backend snapshot was committed as ${done.row.key} but the record was not (a Commit to ${JSON.stringify(done.name)} interrupted)`,
          });
          recorded.add(done.row.key);
          await repair(c, f, () => {
            md.finishCommit(r.namespace, s.name, r.key, done.name, done.row.key, done.row.labels);
            return `finished the commit: the record is now the committed snapshot ${done.name}`;
          });
          continue;
        }
        broken.push({ row: r, f: violation(c, { kind: 'snapshot-backend-missing', object, detail: `its backend snapshot ${r.backendKey} does not exist` }) });
        continue;
      }
      if (b.kind !== r.kind) {
        broken.push({ row: r, f: violation(c, { kind: 'snapshot-kind-mismatch', object, detail: `the record says ${r.kind}, the backend says ${b.kind}` }) });
        continue;
      }
      if (r.parent) {
        const p = byKey.get(`${s.name}\0${r.namespace}\0${r.parent}`);
        if (!p) {
          broken.push({ row: r, f: violation(c, { kind: 'snapshot-parent-missing', object, detail: `its parent ${r.parent} has no record` }) });
          continue;
        }
        if (p.kind !== 'committed') {
          broken.push({ row: r, f: violation(c, { kind: 'snapshot-parent-not-committed', object, detail: `its parent ${r.parent} is ${p.kind}, not committed` }) });
          continue;
        }
        const bp = b.parentId === null ? undefined : backendById.get(b.parentId);
        if (bp?.key !== p.backendKey) {
          broken.push({
            row: r,
            f: violation(c, { kind: 'snapshot-parent-mismatch', object, detail: `its parent ${r.parent} is not the parent its backend snapshot has` }),
          });
        }
      } else if (b.parentId !== null) {
        broken.push({ row: r, f: violation(c, { kind: 'snapshot-parent-mismatch', object, detail: 'the record has no parent, its backend snapshot has one' }) });
      }
    }
    for (const r of rows) {
      if (!recorded.has(r.key)) garbage(c, 'snapshot-unrecorded', `backend snapshot ${s.name} ${r.key}`, 'no snapshot record names it: a collection removes it');
    }
  }
  // Repair: the record goes, with every record below it (their data stays for the collector to judge).
  const gone = new Set<string>();
  for (const { row, f } of broken) {
    await repair(c, f, () => {
      const rows = withDescendants(md.snapshots(), [row]).filter((r) => !gone.has(`${r.snapshotter}\0${r.namespace}\0${r.key}`));
      md.deleteSnapshots(rows);
      for (const r of rows) gone.add(`${r.snapshotter}\0${r.namespace}\0${r.key}`);
      const below = rows.filter((r) => r.key !== row.key);
      return `removed the record${below.length > 0 ? ` and the record${below.length > 1 ? 's' : ''} below it (${below.map((r) => r.key).join(', ')})` : ''}; its backend snapshot is left to the collector`;
    });
  }
}

/**
 * A Commit killed between its backend commit and its record transaction leaves the active record naming a backend
 * key that is gone, and the backend's committed snapshot `<namespace>/<n>/<name>` (same parent) with no record.
 * Found when exactly one such committed snapshot exists and no record has the name yet.
 */
function interruptedCommit(r: NsRow, rows: BackendRow[], all: NsRow[], byKey: Map<string, NsRow>): { row: BackendRow; name: string } | undefined {
  const recordedKeys = new Set(all.filter((x) => x.snapshotter === r.snapshotter).map((x) => x.backendKey));
  const byId = new Map(rows.map((b) => [b.id, b]));
  const parentKey = r.parent ? byKey.get(`${r.snapshotter}\0${r.namespace}\0${r.parent}`)?.backendKey : '';
  if (parentKey === undefined) return undefined;
  const prefix = `${r.namespace}/`;
  const found: { row: BackendRow; name: string }[] = [];
  for (const b of rows) {
    if (b.kind !== 'committed' || recordedKeys.has(b.key) || !b.key.startsWith(prefix)) continue;
    const m = /^(\d+)\/(.+)$/s.exec(b.key.slice(prefix.length));
    if (!m) continue;
    const bparent = b.parentId === null ? '' : (byId.get(b.parentId)?.key ?? '\0');
    if (bparent !== parentKey) continue;
    if (byKey.has(`${r.snapshotter}\0${r.namespace}\0${m[2]!}`)) continue;
    found.push({ row: b, name: m[2]! });
  }
  return found.length === 1 ? found[0] : undefined;
}

/** Lease resources name objects that exist: content (a record in the namespace, or the blob), ingests, snapshots. */
async function checkLeases(c: Ctx, md: MetadataCheck, contentRoot: string): Promise<void> {
  const resources = md.leaseResources();
  count(c, 'leaseResources', resources.length);
  const content = new Set(md.content().map((r) => `${r.namespace}\0${r.digest}`));
  const ingests = new Set(md.ingests().map((r) => `${r.namespace}\0${r.ref}`));
  const snapshots = new Set(md.snapshots().map((r) => `${r.namespace}\0snapshots/${r.snapshotter}\0${r.key}`));
  const blobExists = (digest: string) => {
    try {
      const { algorithm, hex } = parseDigest(digest);
      return statSync(join(contentRoot, 'blobs', algorithm, hex)).isFile();
    } catch {
      return false;
    }
  };
  for (const r of resources) {
    let exists: boolean;
    if (r.type === 'content') exists = content.has(`${r.namespace}\0${r.id}`) || blobExists(r.id);
    else if (r.type === 'ingests') exists = ingests.has(`${r.namespace}\0${r.id}`);
    else if (r.type.startsWith('snapshots/')) exists = snapshots.has(`${r.namespace}\0${r.type}\0${r.id}`);
    else exists = false;
    if (exists) continue;
    const f = violation(c, {
      kind: 'lease-resource-dangling',
      object: `lease ${r.namespace}/${r.lease} resource ${r.type} ${r.id}`,
      detail: r.type === 'content' || r.type === 'ingests' || r.type.startsWith('snapshots/') ? 'it names an object that does not exist' : 'it has an unknown resource type',
    });
    await repair(c, f, () => {
      md.deleteLeaseResource(r);
      return 'dropped the resource entry';
    });
  }
}

async function checkLabels(c: Ctx, md: MetadataCheck): Promise<void> {
  const rows = md.labelled();
  count(c, 'labelledRecords', rows.length);
  for (const r of rows) {
    const problem = labelProblem(r.labels);
    if (!problem) continue;
    const f = violation(c, { kind: 'label-invalid', object: `${singular(r.table)} ${r.id.join('/')}`, detail: problem });
    await repair(c, f, async () => {
      const saved = await saveLabels(c, `${r.table}-${r.id.join('-')}`, r.labels);
      const kept = salvageLabels(r.labels);
      md.setLabels(r.table, r.id, JSON.stringify(kept));
      return `kept ${Object.keys(kept).length} readable label(s), saved the stored text to ${saved}`;
    });
  }
}

const singular = (t: LabelledTable): string =>
  ({ namespaces: 'namespace', content: 'content', leases: 'lease', snapshots: 'snapshot', images: 'image', containers: 'container' })[t];

/** The human account: one line per finding, then a summary line. */
export function formatReport(r: FsckReport, repair: boolean): string {
  const lines: string[] = [];
  for (const f of r.violations) {
    lines.push(`VIOLATION ${f.kind}: ${f.object}: ${f.detail}${f.repaired ? ` -> repaired: ${f.repaired}` : repair ? ' -> NOT repaired' : ''}`);
  }
  for (const g of r.garbage) lines.push(`garbage   ${g.kind}: ${g.object}: ${g.detail}`);
  const checked = Object.entries(r.checked)
    .map(([k, v]) => `${v} ${k}`)
    .join(', ');
  const repaired = r.violations.filter((v) => v.repaired).length;
  lines.push(
    `checked ${checked || 'nothing'}; ${r.violations.length} violation${r.violations.length === 1 ? '' : 's'}` +
      (repair ? ` (${repaired} repaired)` : '') +
      `, ${r.garbage.length} garbage (left to the garbage collector: strata gc / strata prune)`,
  );
  return lines.join('\n') + '\n';
}

/** Exit status: 0 when no violation remains, 1 otherwise. */
export const remainingViolations = (r: FsckReport): number => r.violations.filter((v) => !v.repaired).length;
