/**
 * The power-cut harness's program in the guest (scripts/vm/power-cuts.sh boots the guest once per cut and runs
 * it there, from the build: `node dist/test/vm/power/guest.js MODE BOOT`). Everything it must remember across
 * power cuts lives in the state directory ($STRATA_POWER_STATE, a host directory the guest writes over
 * uncached 9p: a line appended there is on the host when the append returns):
 *
 *  - ledger.jsonl: what the daemon reported done, appended right after each call returned: committed blobs
 *    (digest, size), committed snapshots (snapshotter, name, every file of the tree with its size and sha256),
 *    and deletions about to be asked for (such an object is not checked any more).
 *  - results.jsonl: one line per boot and target: what was checked and what was wrong.
 *
 * Disks (run.sh --image, in this order; they persist across boots): vda ext4, the daemon's root (content store,
 * metadata, overlayfs, native, devmapper's records); vdb btrfs, mounted at the btrfs snapshotter's directory;
 * vdc and vdd, the data and metadata of a device-mapper thin pool (the devmapper snapshotter's); vde, when
 * zfs is a target, a zfs pool.
 *
 * Modes:
 *  - `boot N`: (N = 1: make the file systems and the pool) mount everything; if the ledger has entries, check
 *    (below); then work on every target at once (content ingests, snapshot prepare / write files / commit,
 *    deletions, leases deleted) and cut the power (`echo b > /proc/sysrq-trigger`, from a separate process)
 *    at a random moment 1 to STRATA_POWER_CUT_MAX seconds (default 12) into the work. It never ends by itself.
 *  - `final N`: check, then stop the daemon (the host then requires `strata fsck` to find no violation and no
 *    garbage).
 *  - `hostfsck N CONFIG [final]`: (on the host, the disk images mounted) `strata fsck` of the root after boot N.
 *  - `summary`: (on the host) prints the results per target; exits 1 if anything was wrong.
 *
 * The check, on the root as the cut left it: `strata fsck` (on the host, between boots) reports no violation (garbage is what a crash
 * leaves by design); every committed blob's file hashes to its digest; the daemon starts; every committed
 * blob is known to it; every committed snapshot is committed and a view of it has exactly the files the
 * ledger lists, with their sizes and digests (containerd #5854: zero-length files after a crash); then the
 * leases of the work in flight are deleted with a synchronous collection, after which no ingest, no active
 * snapshot and nothing unrooted is left.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, rmdir, unlink, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { StrataClient } from '../../../src/api/clients/strata.js';
import { Kind } from '../../../src/api/gen/containerd/services/snapshots/v1/snapshots.js';
import type { Mount } from '../../../src/core/mount.js';
import { mountAll, unmount } from '../../../src/mount/index.js';

const exec = promisify(execFile);
const repo = fileURLToPath(new URL('../../../..', import.meta.url)).replace(/\/dist\/?$/, '');
const STRATAD = join(repo, 'bin', 'stratad');
const STRATA = join(repo, 'bin', 'strata');

const STATE = process.env.STRATA_POWER_STATE ?? '';
const LEDGER = join(STATE, 'ledger.jsonl');
const RESULTS = join(STATE, 'results.jsonl');
const MNT = '/mnt/strata-power';
const ROOT = join(MNT, 'root');
const RUN = '/run/strata-power';
const CONFIG = join(RUN, 'config.toml');
const SOCK = join(RUN, 'state', 'strata.sock');
const POOL = 'strata-power-pool';
const ZPOOL = 'strata-power';
const NS = 'power';
const ROOT_LABEL = 'containerd.io/gc.root';
const CUT_MAX = Number(process.env.STRATA_POWER_CUT_MAX ?? 30);
/** Committed objects each target keeps; older ones are deleted (a deletion is work the cut may hit too). */
const KEEP_SNAPSHOTS = 4;
const KEEP_BLOBS = 12;

export const ALL_TARGETS = ['content', 'overlayfs', 'native', 'btrfs', 'devmapper', 'zfs'] as const;
type Target = (typeof ALL_TARGETS)[number];
type SnapshotTarget = Exclude<Target, 'content'>;

function targets(): Target[] {
  const list = (process.env.STRATA_POWER_TARGETS ?? 'content,overlayfs,native,btrfs,devmapper').split(',').filter(Boolean);
  for (const t of list) if (!(ALL_TARGETS as readonly string[]).includes(t)) throw new Error(`unknown power-cut target ${t}`);
  return list as Target[];
}

interface FileEntry {
  size: number;
  sha: string;
}
type LedgerEntry =
  | { t: 'blob'; boot: number; digest: string; size: number }
  | { t: 'snap'; boot: number; sn: SnapshotTarget; name: string; parent: string; files: Record<string, FileEntry> }
  | { t: 'del'; boot: number; kind: 'blob' | 'snap'; sn?: SnapshotTarget; id: string };

interface Ledger {
  blobs: Map<string, { digest: string; size: number; boot: number }>;
  snaps: Map<string, { sn: SnapshotTarget; name: string; parent: string; files: Record<string, FileEntry>; boot: number }>;
}

const snapKey = (sn: string, name: string) => `${sn}/${name}`;

function readLedger(): Ledger {
  const l: Ledger = { blobs: new Map(), snaps: new Map() };
  if (!existsSync(LEDGER)) return l;
  for (const line of readFileSync(LEDGER, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    let e: LedgerEntry;
    try {
      e = JSON.parse(line) as LedgerEntry;
    } catch {
      continue; // a line the cut tore (the append had not returned: the object is not reported yet)
    }
    if (e.t === 'blob') l.blobs.set(e.digest, e);
    else if (e.t === 'snap') l.snaps.set(snapKey(e.sn, e.name), e);
    else if (e.kind === 'blob') l.blobs.delete(e.id);
    else l.snaps.delete(snapKey(e.sn!, e.id));
  }
  return l;
}

function record(e: LedgerEntry): void {
  appendFileSync(LEDGER, JSON.stringify(e) + '\n');
}

interface TargetResult {
  boot: number;
  target: Target | 'daemon' | 'fsck';
  /** Objects checked (blobs or snapshots the ledger had), and what the boot's work committed before the cut. */
  checked: number;
  findings: string[];
}
const results = new Map<string, TargetResult>();
let BOOT = 0;
function result(target: Target | 'daemon' | 'fsck'): TargetResult {
  let r = results.get(target);
  if (!r) results.set(target, (r = { boot: BOOT, target, checked: 0, findings: [] }));
  return r;
}
function finding(target: Target | 'daemon' | 'fsck', msg: string): void {
  result(target).findings.push(msg);
  log(`FINDING [${target}] ${msg}`);
}
function flushResults(extra: Record<string, unknown> = {}): void {
  for (const r of results.values()) appendFileSync(RESULTS, JSON.stringify({ ...r, ...extra }) + '\n');
  results.clear();
}

const t0 = Date.now();
function log(msg: string): void {
  process.stdout.write(`power[${BOOT}] +${((Date.now() - t0) / 1000).toFixed(1)}s ${msg}\n`);
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function sh(cmd: string, args: string[]): Promise<string> {
  try {
    return (await exec(cmd, args, { maxBuffer: 64 << 20, env: { ...process.env, DM_DISABLE_UDEV: '1' } })).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${(e.stderr || e.message).trim()}`);
  }
}

function disks(): string[] {
  const d = (process.env.STRATA_VM_DISKS ?? '').split(' ').filter(Boolean);
  if (d.length < 4) throw new Error(`the power-cut guest needs 4 disks (5 with zfs), got ${d.length}`);
  return d;
}

/* ---------------------------------------------------------------------------------------------------------
 * Storage setup
 * ------------------------------------------------------------------------------------------------------- */

async function setup(fresh: boolean, tg: Target[]): Promise<Target[]> {
  const [root, btrfs, dmData, dmMeta, zfs] = disks();
  for (const m of ['dm-thin-pool', 'btrfs', 'ext4']) await sh('modprobe', [m]).catch(() => undefined);
  if (fresh) {
    await sh('mkfs.ext4', ['-q', '-F', root!]);
    await sh('mkfs.btrfs', ['-q', '-f', btrfs!]);
    await sh('dd', ['if=/dev/zero', `of=${dmMeta}`, 'bs=4096', 'count=1', 'conv=notrunc', 'status=none']);
  }
  await mkdir(MNT, { recursive: true });
  await sh('mount', [root!, MNT]);
  const btrfsDir = join(ROOT, 'io.containerd.snapshotter.v1.btrfs');
  await mkdir(btrfsDir, { recursive: true });
  await sh('mount', [btrfs!, btrfsDir]);
  const sectors = (await sh('blockdev', ['--getsz', dmData!])).trim();
  await sh('dmsetup', ['create', POOL, '--table', `0 ${sectors} thin-pool ${dmMeta} ${dmData} 128 32768 1 skip_block_zeroing`]);
  if (!existsSync(`/dev/mapper/${POOL}`)) await sh('dmsetup', ['mknodes', POOL]);
  let zfsConfig = '';
  if (tg.includes('zfs')) {
    try {
    // The pool on a file vdev on its own ext4 disk: a whole-disk vdev needs udev (not in the guest) to label
    // it. A file vdev's flushes are fsyncs of the file, so what zfs synced survives the cut.
    if (!zfs) throw new Error('zfs is a target but there is no fifth disk');
    const zdir = '/mnt/strata-power-zfs';
    await sh('modprobe', ['zfs']);
    if (fresh) await sh('mkfs.ext4', ['-q', '-F', zfs]);
    await mkdir(zdir, { recursive: true });
    await sh('mount', [zfs, zdir]);
    const zroot = join(ROOT, 'io.containerd.snapshotter.v1.zfs');
    if (fresh) {
      await sh('truncate', ['-s', '1800M', join(zdir, 'vdev')]);
      await sh('zpool', ['create', '-f', '-m', 'none', ZPOOL, join(zdir, 'vdev')]);
      await sh('zfs', ['create', '-o', `mountpoint=${zroot}`, `${ZPOOL}/snapshots`]);
    } else {
      await sh('zpool', ['import', '-f', '-d', zdir, ZPOOL]);
    }
    if (!(await sh('findmnt', ['-n', '-o', 'FSTYPE', zroot]).catch(() => '')).includes('zfs')) await sh('zfs', ['mount', `${ZPOOL}/snapshots`]);
    zfsConfig = `[plugins."io.containerd.snapshotter.v1.zfs"]\nroot_path = "${zroot}"\n`;
    } catch (err) {
      // The other targets go on without it; the run fails on the finding.
      finding('zfs', `zfs pool setup failed: ${(err as Error).message}`);
      tg = tg.filter((t) => t !== 'zfs');
    }
  }
  mkdirSync(join(RUN, 'state'), { recursive: true });
  writeFileSync(
    CONFIG,
    `version = 2\nroot = "${ROOT}"\nstate = "${join(RUN, 'state')}"\n` +
      // What the harness does not use and would only probe at every start under emulation (process spawns, test mounts).
      `disabled_plugins = [${['stargz', 'erofs', 'aufs', ...(zfsConfig ? [] : ['zfs'])].map((p) => `"io.containerd.snapshotter.v1.${p}"`).join(', ')}]\n` +
      `[grpc]\naddress = "${SOCK}"\n` +
      `[plugins."io.containerd.snapshotter.v1.devmapper"]\npool_name = "${POOL}"\nbase_image_size = "128MB"\n` +
      zfsConfig,
  );
  return tg;
}

/* ---------------------------------------------------------------------------------------------------------
 * The daemon
 * ------------------------------------------------------------------------------------------------------- */

let daemon: ChildProcess | undefined;
let daemonLog = '';

async function startDaemon(): Promise<StrataClient> {
  daemonLog = '';
  daemon = spawn(process.execPath, [STRATAD, '--config', CONFIG, '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
  daemon.stdout!.on('data', (d: Buffer) => (daemonLog += d.toString()));
  daemon.stderr!.on('data', (d: Buffer) => (daemonLog += d.toString()));
  const c = new StrataClient(SOCK, { namespace: NS });
  const deadline = Date.now() + 240_000;
  while (Date.now() < deadline) {
    if (daemon.exitCode !== null || daemon.signalCode !== null) throw new Error(`stratad exited (${daemon.exitCode ?? daemon.signalCode}): ${daemonLog.slice(-2000)}`);
    if (existsSync(SOCK)) {
      try {
        await c.call(c.version, c.version.version, {});
        return c;
      } catch {
        /* not serving yet */
      }
    }
    await sleep(200);
  }
  throw new Error(`stratad did not answer within 240 s: ${daemonLog.slice(-2000)}`);
}

async function stopDaemon(): Promise<void> {
  const d = daemon;
  if (!d || d.exitCode !== null) return;
  const exited = new Promise((r) => d.once('exit', r));
  d.kill('SIGTERM');
  await exited;
}

/**
 * `strata fsck` of the root as the cut left it, on the host (scripts/vm/power-cuts.sh mounts the disk images
 * there between boots: a node start and a check under emulation cost half a minute, on the host a second).
 */
async function fsck(config: string): Promise<{ violations: string[]; garbage: string[] }> {
  let out: string;
  try {
    out = (await exec(process.execPath, [STRATA, 'fsck', '--config', config, '--json'], { maxBuffer: 64 << 20 })).stdout;
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    if (e.code !== 1 || !e.stdout) throw new Error(`strata fsck could not run: ${(e.stderr ?? '').trim()}`);
    out = e.stdout;
  }
  const r = JSON.parse(out) as { violations: { kind: string; object: string; detail: string }[]; garbage: { kind: string; object: string }[] };
  // The content store removes a temporary ingest directory only once it is old (another store instance may be
  // building it): a young one is not something a collection missed.
  r.garbage = r.garbage.filter((g) => !/ingest\/\.tmp-/.test(g.object));
  return {
    violations: r.violations.map((v) => `${v.kind} ${v.object}: ${v.detail}`),
    garbage: r.garbage.map((g) => `${g.kind} ${g.object}`),
  };
}

/* ---------------------------------------------------------------------------------------------------------
 * Trees
 * ------------------------------------------------------------------------------------------------------- */

async function readTree(dir: string): Promise<Record<string, FileEntry>> {
  const out: Record<string, FileEntry> = {};
  const walk = async (d: string) => {
    for (const name of await readdir(d)) {
      const p = join(d, name);
      const st = await lstat(p);
      if (st.isDirectory()) {
        if (d === dir && name === 'lost+found') continue;
        await walk(p);
      } else if (st.isFile()) {
        const data = await readFile(p);
        out[relative(dir, p)] = { size: data.length, sha: sha256(data) };
      }
    }
  };
  await walk(dir);
  return out;
}

function compareTree(expected: Record<string, FileEntry>, actual: Record<string, FileEntry>): string[] {
  const bad: string[] = [];
  for (const [p, e] of Object.entries(expected)) {
    const a = actual[p];
    if (!a) bad.push(`${p} missing`);
    else if (a.size !== e.size) bad.push(`${p} has ${a.size} bytes, not ${e.size}${a.size === 0 ? ' (zero-length: containerd #5854)' : ''}`);
    else if (a.sha !== e.sha) bad.push(`${p} has other bytes (sha256 ${a.sha.slice(0, 12)}, not ${e.sha.slice(0, 12)})`);
  }
  for (const p of Object.keys(actual)) if (!expected[p]) bad.push(`${p} should not be there`);
  return bad;
}

const mountsOf = (ms: { type: string; source: string; target?: string; options: string[] }[]): Mount[] =>
  ms.map((m) => ({ type: m.type, source: m.source, options: m.options }));

async function withMounted<T>(mounts: Mount[], fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp('/tmp/power-m-');
  await mountAll(mounts, dir);
  try {
    return await fn(dir);
  } finally {
    await unmount(dir);
    await rmdir(dir).catch(() => undefined);
  }
}

/* ---------------------------------------------------------------------------------------------------------
 * The check
 * ------------------------------------------------------------------------------------------------------- */

const blobPath = (digest: string) => join(ROOT, 'io.containerd.content.v1.content', 'blobs', 'sha256', digest.slice('sha256:'.length));

async function listSnapshots(c: StrataClient, sn: string) {
  return (await c.collect(c.snapshots.list({ snapshotter: sn, filters: [] }, c.metadata()))).flatMap((r) => r.info);
}
async function listBlobs(c: StrataClient) {
  return (await c.collect(c.content.list({ filters: [] }, c.metadata()))).flatMap((r) => r.info);
}

async function check(tg: Target[], final: boolean): Promise<StrataClient | undefined> {
  const ledger = readLedger();
  const snapTargets = tg.filter((t): t is SnapshotTarget => t !== 'content');

  // 1. (`strata fsck` of the root as the cut left it ran on the host, before this boot: hostfsck below.)
  // 2. Committed blobs, on disk.
  if (tg.includes('content')) {
    for (const b of ledger.blobs.values()) {
      result('content').checked++;
      try {
        const data = await readFile(blobPath(b.digest));
        if (data.length !== b.size) finding('content', `blob ${b.digest} (committed in boot ${b.boot}) has ${data.length} bytes, not ${b.size}`);
        else if (`sha256:${sha256(data)}` !== b.digest) finding('content', `blob ${b.digest} (committed in boot ${b.boot}) does not hash to its digest`);
      } catch (err) {
        finding('content', `blob ${b.digest} (committed in boot ${b.boot}) unreadable: ${(err as Error).message}`);
      }
    }
  }

  // 3. The daemon starts.
  let c: StrataClient;
  try {
    c = await startDaemon();
  } catch (err) {
    finding('daemon', `the daemon did not start: ${(err as Error).message}`);
    return undefined;
  }
  result('daemon').checked++;
  log('daemon up');

  // 4. Through the daemon: blobs known, snapshots committed with their files.
  if (tg.includes('content')) {
    const known = new Set((await listBlobs(c)).map((i) => i.digest));
    for (const b of ledger.blobs.values()) if (!known.has(b.digest)) finding('content', `blob ${b.digest} (committed in boot ${b.boot}) is not in the daemon's content list`);
  }
  // The views of the check under a lease of their own: the daemon's GC scheduler collects a snapshot nothing
  // references, a view included (the first runs lost views that way between their creation and their removal).
  const checkLease = `check-${BOOT}`;
  await c.call(c.leases, c.leases.create, { id: checkLease, labels: {} });
  const cv = c.with({ lease: checkLease });
  for (const s of ledger.snaps.values()) {
    if (!snapTargets.includes(s.sn)) continue;
    result(s.sn).checked++;
    const what = `snapshot ${s.name} (committed in boot ${s.boot})`;
    try {
      const st = await c.call(c.snapshots, c.snapshots.stat, { snapshotter: s.sn, key: s.name });
      if (st.info?.kind !== Kind.COMMITTED) finding(s.sn, `${what} is not committed`);
      const key = `check-${BOOT}-${s.name}`;
      const v = await cv.call(cv.snapshots, cv.snapshots.view, { snapshotter: s.sn, key, parent: s.name, labels: {} });
      try {
        const bad = compareTree(s.files, await withMounted(mountsOf(v.mounts), readTree));
        for (const b of bad) finding(s.sn, `${what}: ${b}`);
      } finally {
        await c.call(c.snapshots, c.snapshots.remove, { snapshotter: s.sn, key });
      }
    } catch (err) {
      finding(s.sn, `${what}: ${(err as Error).message}`);
    }
  }
  await c.call(c.leases, c.leases.delete, { id: checkLease, sync: false });
  log(`checked ${ledger.blobs.size} blob(s), ${[...ledger.snaps.values()].filter((s) => snapTargets.includes(s.sn)).length} snapshot(s)`);

  // 5. What was in flight goes: the work's leases deleted (a client's cleanup), a synchronous collection.
  const leases = (await c.call(c.leases, c.leases.list, { filters: [] })).leases.filter((l) => l.id.startsWith('work-'));
  for (const [i, l] of leases.entries()) await c.call(c.leases, c.leases.delete, { id: l.id, sync: i === leases.length - 1 });
  if (leases.length === 0) await c.call(c.leases, c.leases.delete, { id: 'none', sync: true }).catch(() => undefined);
  const statuses = (await c.call(c.content, c.content.listStatuses, { filters: [] })).statuses;
  for (const s of statuses) finding('content', `ingest ${s.ref} left after its lease went and a collection ran`);
  if (tg.includes('content')) {
    for (const b of await listBlobs(c)) if (!b.labels[ROOT_LABEL]) finding('content', `blob ${b.digest} unrooted after a collection`);
  }
  for (const sn of snapTargets) {
    for (const i of await listSnapshots(c, sn)) {
      if (i.kind !== Kind.COMMITTED) finding(sn, `snapshot ${i.name} (kind ${i.kind}) left after its lease went and a collection ran`);
      else if (!i.labels[ROOT_LABEL]) finding(sn, `snapshot ${i.name} unrooted after a collection`);
    }
  }
  log(`collected: ${leases.length} lease(s) of the work in flight deleted`);

  if (final) {
    await stopDaemon();
    // A graceful end is a graceful shutdown: the guest then powers off with sysrq 'o', which syncs nothing, so
    // the file systems are synced here as a host's shutdown would. Without it, btrfs lost the last seconds of
    // its metadata (a subvolume deleted after its record's removal was fsynced, through btrfs's log tree)
    // and the host's fsck found that view again, as garbage: what a power cut leaves by design, not what a
    // graceful stop may leave.
    await sh('sync', []);
    return undefined;
  }
  return c;
}

/* ---------------------------------------------------------------------------------------------------------
 * The work
 * ------------------------------------------------------------------------------------------------------- */

/** A size between 1 byte and max, log-uniform (many small files, some large). */
const size = (max: number) => Math.max(1, Math.floor(Math.exp(Math.random() * Math.log(max))));
const pick = <T>(a: T[]): T | undefined => (a.length ? a[randomInt(a.length)] : undefined);

async function contentWork(c: StrataClient, ledger: Ledger): Promise<void> {
  for (let n = 1; ; n++) {
    const data = randomBytes(size(4 << 20));
    const digest = `sha256:${sha256(data)}`;
    const lease = `work-${BOOT}-content-${n}`;
    await c.call(c.leases, c.leases.create, { id: lease, labels: {} });
    await c.with({ lease }).writeBlob([data], { ref: lease, expected: digest, total: data.length, labels: { [ROOT_LABEL]: `${BOOT}` } });
    record({ t: 'blob', boot: BOOT, digest, size: data.length });
    ledger.blobs.set(digest, { digest, size: data.length, boot: BOOT });
    committed.content = (committed.content ?? 0) + 1;
    await c.call(c.leases, c.leases.delete, { id: lease, sync: false });
    if (ledger.blobs.size > KEEP_BLOBS) {
      const old = ledger.blobs.values().next().value!;
      record({ t: 'del', boot: BOOT, kind: 'blob', id: old.digest });
      ledger.blobs.delete(old.digest);
      await c.call(c.content, c.content.delete, { digest: old.digest });
    }
  }
}

async function snapshotWork(c: StrataClient, ledger: Ledger, sn: SnapshotTarget): Promise<void> {
  for (let n = 1; ; n++) {
    const mine = [...ledger.snaps.values()].filter((s) => s.sn === sn);
    const parent = Math.random() < 0.25 ? undefined : pick(mine);
    const files: Record<string, FileEntry> = { ...(parent?.files ?? {}) };
    const lease = `work-${BOOT}-${sn}-${n}`;
    const cl = c.with({ lease });
    await c.call(c.leases, c.leases.create, { id: lease, labels: {} });
    const key = `work-${BOOT}-${n}`;
    const p = await cl.call(cl.snapshots, cl.snapshots.prepare, { snapshotter: sn, key, parent: parent?.name ?? '', labels: {} });
    await withMounted(mountsOf(p.mounts), async (dir) => {
      const count = 2 + randomInt(10);
      for (let i = 0; i < count; i++) {
        const rel = join(`d${randomInt(4)}`, `f-${BOOT}-${n}-${i}`);
        const data = randomBytes(size(1 << 20));
        await mkdir(join(dir, dirname(rel)), { recursive: true });
        await writeFile(join(dir, rel), data);
        files[rel] = { size: data.length, sha: sha256(data) };
      }
      const inherited = Object.keys(parent?.files ?? {});
      const over = pick(inherited); // a parent's file rewritten (overlayfs: copied up)
      if (over) {
        const data = randomBytes(size(256 << 10));
        await writeFile(join(dir, over), data);
        files[over] = { size: data.length, sha: sha256(data) };
      }
      const gone = pick(inherited.filter((f) => f !== over)); // and one removed (a whiteout)
      if (gone) {
        await unlink(join(dir, gone));
        delete files[gone];
      }
    });
    const name = `c-${BOOT}-${n}`;
    await cl.call(cl.snapshots, cl.snapshots.commit, { snapshotter: sn, name, key, labels: { [ROOT_LABEL]: `${BOOT}` }, parent: '' });
    record({ t: 'snap', boot: BOOT, sn, name, parent: parent?.name ?? '', files });
    ledger.snaps.set(snapKey(sn, name), { sn, name, parent: parent?.name ?? '', files, boot: BOOT });
    committed[sn] = (committed[sn] ?? 0) + 1;
    await c.call(c.leases, c.leases.delete, { id: lease, sync: false });
    const live = [...ledger.snaps.values()].filter((s) => s.sn === sn);
    if (live.length > KEEP_SNAPSHOTS) {
      const parents = new Set(live.map((s) => s.parent));
      const leaf = live.find((s) => !parents.has(s.name));
      if (leaf) {
        record({ t: 'del', boot: BOOT, kind: 'snap', sn, id: leaf.name });
        ledger.snaps.delete(snapKey(sn, leaf.name));
        await c.call(c.snapshots, c.snapshots.remove, { snapshotter: sn, key: leaf.name }).catch((err: Error) => {
          if (!/failed precondition|not found/i.test(`${(err as { kind?: string }).kind} ${err.message}`)) throw err;
        });
      }
    }
  }
}

const committed: Partial<Record<Target, number>> = {};

/** Removes rooted objects the ledger does not know (committed, then cut before the ledger heard). */
async function adoptUnknown(c: StrataClient, tg: Target[], ledger: Ledger): Promise<void> {
  if (tg.includes('content')) {
    for (const b of await listBlobs(c)) if (!ledger.blobs.has(b.digest)) await c.call(c.content, c.content.delete, { digest: b.digest }).catch(() => undefined);
  }
  for (const sn of tg.filter((t): t is SnapshotTarget => t !== 'content')) {
    // Children first: a parent with children cannot go.
    for (let round = 0; round < 8; round++) {
      const unknown = (await listSnapshots(c, sn)).filter((i) => !ledger.snaps.has(snapKey(sn, i.name)));
      if (unknown.length === 0) break;
      for (const i of unknown) await c.call(c.snapshots, c.snapshots.remove, { snapshotter: sn, key: i.name }).catch(() => undefined);
    }
  }
}

async function work(c: StrataClient, tg: Target[]): Promise<never> {
  const ledger = readLedger();
  await adoptUnknown(c, tg, ledger);
  const cut = 1 + Math.random() * (CUT_MAX - 1);
  appendFileSync(RESULTS, JSON.stringify({ boot: BOOT, target: 'cut', after: Number(cut.toFixed(2)) }) + '\n');
  // The cut from another process: whatever this one is doing, at that moment, without a sync.
  spawn('sh', ['-c', `sleep ${cut.toFixed(2)}; echo b > /proc/sysrq-trigger`], { stdio: 'ignore', detached: true }).unref();
  log(`working; the power goes in ${cut.toFixed(1)} s`);
  const loops = tg.map(async (t) => {
    try {
      if (t === 'content') await contentWork(c, ledger);
      else await snapshotWork(c, ledger, t);
    } catch (err) {
      finding(t, `work failed: ${(err as Error).message}`);
      flushResults();
    }
  });
  await Promise.all(loops);
  await sleep(3_600_000);
  throw new Error('unreachable');
}

/* ---------------------------------------------------------------------------------------------------------
 * Summary (host)
 * ------------------------------------------------------------------------------------------------------- */

function summary(): number {
  const lines = readFileSync(RESULTS, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as TargetResult & { after?: number });
  const cuts = lines.filter((l) => (l.target as string) === 'cut');
  const by = new Map<string, { checks: number; objects: number; findings: string[] }>();
  for (const l of lines) {
    if ((l.target as string) === 'cut') continue;
    const s = by.get(l.target) ?? { checks: 0, objects: 0, findings: [] };
    s.checks++;
    s.objects += l.checked;
    s.findings.push(...l.findings.map((f) => `boot ${l.boot}: ${f}`));
    by.set(l.target, s);
  }
  console.log(`power cuts: ${cuts.length} (cut ${cuts.map((c) => c.after).join(', ')} s into the work)`);
  let bad = 0;
  for (const [t, s] of by) {
    console.log(`${t.padEnd(10)} ${String(s.checks).padStart(3)} boot(s) checked, ${String(s.objects).padStart(5)} object checks, ${s.findings.length} finding(s)`);
    for (const f of s.findings.slice(0, 20)) console.log(`    ${f}`);
    if (s.findings.length > 20) console.log(`    ... ${s.findings.length - 20} more`);
    bad += s.findings.length;
  }
  return bad > 0 ? 1 : 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * Main
 * ------------------------------------------------------------------------------------------------------- */

async function main(): Promise<number> {
  const [mode, n] = process.argv.slice(2);
  if (!STATE) throw new Error('STRATA_POWER_STATE is not set');
  if (mode === 'summary') return summary();
  if (mode === 'hostfsck') {
    // hostfsck BOOT CONFIG [final]: after boot BOOT (its cut, or the final collection), on the host.
    BOOT = Number(n);
    const after = process.argv[5] === 'final';
    const r = await fsck(process.argv[4]!).catch((err: Error) => ({ violations: [err.message], garbage: [] as string[] }));
    for (const v of r.violations) finding('fsck', `after boot ${BOOT}: ${v}`);
    if (after) for (const g of r.garbage) finding('fsck', `after the final collection: garbage ${g}`);
    result('fsck').checked++;
    log(`fsck on the host: ${r.violations.length} violation(s), ${r.garbage.length} garbage${after ? ' (after the final collection)' : ''}`);
    flushResults();
    return 0;
  }
  BOOT = Number(n);
  const fresh = mode === 'boot' && BOOT === 1;
  const tg = await setup(fresh, targets());
  log(`storage up (${fresh ? 'new' : 'after a cut'}); targets ${tg.join(',')}`);
  let c: StrataClient | undefined;
  if (fresh) {
    c = await startDaemon();
    const plugins = (await c.call(c.introspection, c.introspection.plugins, { filters: [] })).plugins;
    for (const t of tg.filter((x) => x !== 'content')) {
      const p = plugins.find((x) => x.type === 'io.containerd.snapshotter.v1' && x.id === t);
      if (!p || p.initErr) finding(t, `snapshotter plugin not ok: ${p?.initErr?.message ?? 'not loaded'}`);
    }
  } else {
    c = await check(tg, mode === 'final');
  }
  for (const t of tg) result(t);
  flushResults();
  if (mode === 'final' || !c) return 0;
  return work(c, tg);
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    console.error(`power: ${err.stack ?? err.message}`);
    process.exit(3);
  },
);
