/**
 * Pull + unpack benchmark: stratad against a real containerd, both pulling the same single-layer images from
 * the same local registry (Debian's docker-registry on 127.0.0.1) in one run, with GNU tar extracting the
 * same layer blob as the floor.
 *
 *   node dist/bench/pull.js [--rounds 3] [--images a,b,c] [--big-rounds N] [--base-files 10000] [--base-size 200MB]
 *                           [--small-files 50000] [--big-size 1G] [--json] [--daemons strata,containerd] [--keep]
 *                           [--image-dir DIR] [--methods containerd-ctr,strata-ctr,strata-cli,tar-gz,tar-plain]
 *
 * Must run as root (loop mount, drop_caches, tar restoring owners). Everything that is read or written during a
 * measurement lives on one fresh loop-mounted ext4: the registry's storage, the daemons' roots and the tar
 * floor's target directories.
 *
 * Images (built once per run, deterministic: seeded PRNG / AES-CTR keystream, GNU tar --sort=name with fixed
 * owner and mtime, gzip -n; one gzip layer each, OCI layout, pushed with skopeo --preserve-digests):
 *   a  base-OS-like: --base-files files (default 10,000; a few of 1-10 MiB, the rest log-uniform 32 B-64 KiB,
 *      2% empty) totalling about --base-size, in files/20 directories (a random tree), files/50 symlinks
 *      (relative and absolute) and 20 hard links; text-like and base64-like content; gzip -6.
 *   b  --small-files files (default 50,000) of 512-1536 bytes of text-like content in 500 directories; gzip -6.
 *   c  one file of --big-size (default 1 GiB), 1 MiB blocks of text-like or base64-like content; gzip -1.
 *
 * Each round, for each image, these are measured in turn (the order reverses every other round), each daemon
 * started on an empty root just before (stopped and wiped just after, so nothing is cached), page caches dropped
 * (sync; echo 3 > drop_caches) and the client's own code warmed with a `version` call before the timed command:
 *   containerd (ctr)   ctr -a containerd.sock -n bench image pull --plain-http REF   (ctr fetches, then unpacks
 *                      through the daemon's diff service); unpack time = ctr's own "done: <duration>" line
 *   stratad (ctr)      the same command against stratad's socket
 *   stratad (strata)   node bin/strata -a strata.sock -n bench image pull --plain-http REF (the daemon fetches
 *                      and unpacks); unpack time = from the "layer …: unpacking" to the "…: unpacked" stderr line,
 *                      timestamped as they arrive
 *   tar -xzf           tar -xzf <the layer blob in the registry's storage> -C <empty dir>  (GNU tar runs gzip -d
 *                      as a child process, so it is the pipeline `gzip -dc blob | tar -xf -`)
 *   tar -xf            tar -xf <the layer, decompressed once beforehand> -C <empty dir>   (no gunzip)
 *                      For both tar floors the input file is read once (cat > /dev/null) after the cache drop:
 *                      the daemons unpack a blob they have just written, so it is in their page cache too.
 *   stratad (ctr, erofs)  ctr ... image pull --plain-http --snapshotter erofs REF against stratad: the layer goes into
 *                      the EROFS snapshotter's upper dir and its Commit builds layer.erofs (mkfs.erofs), all
 *                      inside ctr's "done:" duration; only with --methods (e.g. strata-ctr,strata-ctr-erofs for
 *                      EROFS vs overlayfs, alternating as every pair here)
 * After each (untimed) the unpacked tree's entries are counted and checked against the layer's.
 * Unpack MB/s = uncompressed layer bytes (10^6) / unpack seconds; files/s = tar entries / unpack seconds.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash, type Hash } from 'node:crypto';
import { createWriteStream, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { dirname, join, relative } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  benchDirs,
  cleanup,
  commandLine,
  cpuSeconds,
  dropCaches,
  env,
  fetchVersion,
  formatBytes,
  installCleanupHandlers,
  intOption,
  log,
  machineInfo,
  median,
  MiB,
  mountLoopExt4,
  parseBenchArgs,
  parseSize,
  repoRoot,
  reportFailure,
  startChild,
  startContainerd,
  startStrata,
  stopChild,
  table,
  unmount,
  type Child,
  type Daemon,
  type DaemonName,
} from './lib.js';

installCleanupHandlers();

const NAMESPACE = 'bench';
const usage =
  'usage: node dist/bench/pull.js [--rounds 3] [--images a,b,c] [--big-rounds N] [--base-files 10000] [--base-size 200MB] ' +
  '[--small-files 50000] [--big-size 1G] [--methods LIST] [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]';

const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '-');
const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '-');
const f3 = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : '-');
const f0 = (x: number) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '-');
const MB = 1e6;

// ---------------------------------------------------------------------------------------------------------------
// Deterministic content

function xorshift(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

const POOL = 16 * MiB;
const B64 = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/');

/** Two 16 MiB pools: base64-alphabet bytes (6 bits of entropy per byte) and text made of random words. */
function makePools(): { bin: Buffer; text: Buffer; words: string[] } {
  const c = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 9));
  const bin = c.update(Buffer.alloc(POOL));
  for (let i = 0; i < bin.length; i++) bin[i] = B64[bin[i]! & 63]!;
  const rnd = xorshift(0x5eed1234);
  const words: string[] = [];
  for (let i = 0; i < 4096; i++) {
    let w = '';
    const n = 2 + (rnd() % 9);
    for (let j = 0; j < n; j++) w += String.fromCharCode(97 + (rnd() % 26));
    words.push(w);
  }
  const parts: string[] = [];
  let len = 0;
  while (len < POOL + 4096) {
    const n = 4 + (rnd() % 12);
    let line = '';
    for (let j = 0; j < n; j++) line += (j ? ' ' : '') + words[rnd() % words.length];
    line += rnd() % 8 === 0 ? ';\n' : '\n';
    parts.push(line);
    len += line.length;
  }
  const text = Buffer.from(parts.join('')).subarray(0, POOL);
  return { bin, text, words };
}

type Pools = ReturnType<typeof makePools>;

function piece(pools: Pools, kind: 'text' | 'bin', size: number, rnd: () => number): Buffer {
  const pool = kind === 'text' ? pools.text : pools.bin;
  if (size >= POOL) throw new Error('piece too large');
  const off = rnd() % (POOL - size);
  return pool.subarray(off, off + size);
}

interface SourceStats {
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  bytes: number;
}

/** (a) A base-OS-like tree. */
function genBase(dir: string, pools: Pools, nFiles: number, targetBytes: number): SourceStats {
  const rnd = xorshift(0xa11ce);
  const word = () => pools.words[rnd() % pools.words.length]!;
  const nDirs = Math.max(1, Math.round(nFiles / 20));
  const dirs: string[] = [''];
  for (let i = 1; i < nDirs; i++) {
    // Parents among the earlier directories, biased toward the first ones (a shallow, bushy tree).
    const parent = dirs[Math.floor(((rnd() % 1000) / 1000) ** 2 * i)]!;
    dirs.push(join(parent, `${word()}-${i}`));
  }
  for (const d of dirs) mkdirSync(join(dir, d), { recursive: true, mode: 0o755 });

  const nLarge = Math.min(nFiles, Math.max(1, Math.round(nFiles / 500)));
  const sizes: number[] = [];
  let largeBytes = 0;
  for (let i = 0; i < nLarge; i++) {
    const s = MiB + (rnd() % (9 * MiB));
    sizes.push(s);
    largeBytes += s;
  }
  const raw: number[] = [];
  let rawSum = 0;
  for (let i = nLarge; i < nFiles; i++) {
    const r = rnd() % 50 === 0 ? 0 : Math.exp(Math.log(32) + ((rnd() % 100_000) / 100_000) * (Math.log(65536) - Math.log(32)));
    raw.push(r);
    rawSum += r;
  }
  const scale = rawSum > 0 ? Math.max(0.05, (targetBytes - largeBytes) / rawSum) : 1;
  for (const r of raw) sizes.push(Math.round(r * scale));
  // Shuffle so the large files land in random directories.
  for (let i = sizes.length - 1; i > 0; i--) {
    const j = rnd() % (i + 1);
    [sizes[i], sizes[j]] = [sizes[j]!, sizes[i]!];
  }
  const exts = ['', '.so', '.conf', '.py', '.h', '.txt', '.gz', '.mo', '.pl', '.json', '.1', ''];
  const files: string[] = [];
  let bytes = 0;
  for (let i = 0; i < nFiles; i++) {
    const size = sizes[i]!;
    const rel = join(dirs[rnd() % dirs.length]!, `${word()}${i}${exts[rnd() % exts.length]}`);
    const kind = size >= MiB ? (rnd() % 4 === 0 ? 'text' : 'bin') : rnd() % 10 < 6 ? 'text' : 'bin';
    const fd = openSync(join(dir, rel), 'w', rnd() % 10 === 0 ? 0o755 : 0o644);
    let left = size;
    while (left > 0) {
      const n = Math.min(left, 4 * MiB);
      writeSync(fd, piece(pools, kind, n, rnd));
      left -= n;
    }
    closeSync(fd);
    files.push(rel);
    bytes += size;
  }
  const nSymlinks = Math.round(nFiles / 50);
  for (let i = 0; i < nSymlinks; i++) {
    const at = join(dirs[rnd() % dirs.length]!, `link-${word()}-${i}`);
    const to = files[rnd() % files.length]!;
    const target = rnd() % 10 < 7 ? relative(dirname(at), to) : '/' + to;
    symlinkSync(target, join(dir, at));
  }
  const nHard = Math.min(20, files.length);
  for (let i = 0; i < nHard; i++) {
    const to = files[rnd() % files.length]!;
    linkSync(join(dir, to), join(dir, dirs[rnd() % dirs.length]!, `hard-${word()}-${i}`));
  }
  return { files: nFiles, dirs: nDirs, symlinks: nSymlinks, hardlinks: nHard, bytes };
}

/** (b) Many small files. */
function genSmall(dir: string, pools: Pools, nFiles: number): SourceStats {
  const rnd = xorshift(0xb0b);
  const dirs: string[] = [];
  for (let i = 0; i < 20; i++) for (let j = 0; j < 25; j++) dirs.push(join(`d${String(i).padStart(2, '0')}`, `s${String(j).padStart(2, '0')}`));
  for (const d of dirs) mkdirSync(join(dir, d), { recursive: true, mode: 0o755 });
  let bytes = 0;
  for (let i = 0; i < nFiles; i++) {
    const size = 512 + (rnd() % 1025);
    writeFileSync(join(dir, dirs[i % dirs.length]!, `f${String(i).padStart(6, '0')}.txt`), piece(pools, 'text', size, rnd), { mode: 0o644 });
    bytes += size;
  }
  return { files: nFiles, dirs: dirs.length + 20, symlinks: 0, hardlinks: 0, bytes };
}

/** (c) One big file, written in 1 MiB blocks (never held in memory). */
function genBig(dir: string, pools: Pools, size: number): SourceStats {
  const rnd = xorshift(0xc0ffee);
  const fd = openSync(join(dir, 'big.bin'), 'w', 0o644);
  try {
    for (let left = size; left > 0; ) {
      const n = Math.min(left, MiB);
      writeSync(fd, piece(pools, rnd() % 2 ? 'text' : 'bin', n, rnd));
      left -= n;
    }
  } finally {
    closeSync(fd);
  }
  return { files: 1, dirs: 0, symlinks: 0, hardlinks: 0, bytes: size };
}

// ---------------------------------------------------------------------------------------------------------------
// Layers and OCI layouts

function exitOf(p: ChildProcess, what: string): Promise<void> {
  return new Promise((res, rej) => {
    p.once('error', (e) => rej(new Error(`${what}: ${e.message}`)));
    p.once('exit', (code, sig) => (code === 0 ? res() : rej(new Error(`${what} exited with ${code ?? sig}`))));
  });
}

/** Passes chunks through, hashing and counting them, optionally teeing them into a file (with back-pressure). */
function tap(hash: Hash, count: { n: number }, tee?: string): Transform {
  const out = tee ? createWriteStream(tee) : undefined;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      count.n += chunk.length;
      if (out && !out.write(chunk)) out.once('drain', () => cb(null, chunk));
      else cb(null, chunk);
    },
    flush(cb) {
      if (out) out.end(() => cb());
      else cb();
    },
  });
}

interface Layer {
  /** sha256 of the gzip blob. */
  digest: string;
  size: number;
  diffID: string;
  tarSize: number;
  /** Entries in the tar (tar -tf), "./" included. */
  entries: number;
}

const writeJson = (path: string, v: unknown): { digest: string; size: number } => {
  const b = Buffer.from(JSON.stringify(v));
  const hex = createHash('sha256').update(b).digest('hex');
  writeFileSync(join(path, 'blobs', 'sha256', hex), b);
  return { digest: `sha256:${hex}`, size: b.length };
};

const goArch = (a: string) => ({ x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x' })[a] ?? a;

/**
 * GNU tar of `src` (sorted names, 0/0 owners, fixed mtime) piped through `gzip -<level> -n` into an OCI layout at
 * `layout` (tag "latest"), hashing both streams as they go; the uncompressed tar is also written to `tarFile`.
 */
async function buildImage(src: string, layout: string, tarFile: string, level: number): Promise<Layer> {
  mkdirSync(join(layout, 'blobs', 'sha256'), { recursive: true });
  writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const tar = spawn('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '--mtime=@946684800', '-C', src, '-cf', '-', '.'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const gz = spawn('gzip', [`-${level}`, '-n', '-c'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const tarDone = exitOf(tar, 'tar -c');
  const gzDone = exitOf(gz, 'gzip');
  const hu = createHash('sha256');
  const hc = createHash('sha256');
  const nu = { n: 0 };
  const nc = { n: 0 };
  const tmpBlob = join(layout, 'blobs', 'layer.tmp');
  await Promise.all([
    pipeline(tar.stdout!, tap(hu, nu, tarFile), gz.stdin!),
    pipeline(gz.stdout!, tap(hc, nc), createWriteStream(tmpBlob)),
    tarDone,
    gzDone,
  ]);
  const hex = hc.digest('hex');
  renameSync(tmpBlob, join(layout, 'blobs', 'sha256', hex));
  const diffID = `sha256:${hu.digest('hex')}`;
  const listing = spawnSync('tar', ['-tf', tarFile], { encoding: 'utf8', maxBuffer: 1 << 30 });
  if (listing.status !== 0) throw new Error(`tar -tf ${tarFile}: ${listing.stderr}`);
  const entries = listing.stdout.split('\n').filter(Boolean).length;
  const config = writeJson(layout, {
    architecture: goArch(process.arch),
    os: 'linux',
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'] },
    rootfs: { type: 'layers', diff_ids: [diffID] },
    history: [{ created: '2000-01-01T00:00:00Z', created_by: 'strata bench/pull.ts' }],
  });
  const manifest = writeJson(layout, {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${hex}`, size: nc.n }],
  });
  writeFileSync(
    join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }],
    }),
  );
  return { digest: `sha256:${hex}`, size: nc.n, diffID, tarSize: nu.n, entries };
}

// ---------------------------------------------------------------------------------------------------------------
// The registry

interface Registry {
  host: string;
  storage: string;
  child: Child;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((res, rej) => {
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => res());
  });
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((res) => srv.close(() => res()));
  return port;
}

async function startRegistry(tmp: string, storage: string): Promise<Registry> {
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const config = join(tmp, 'registry.yml');
  writeFileSync(
    config,
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${storage}`,
      '  maintenance:',
      '    uploadpurging:',
      '      enabled: false',
      'http:',
      `  addr: ${host}`,
      '  secret: strata-bench-pull',
      '',
    ].join('\n'),
  );
  log(`starting docker-registry on ${host}, storage ${storage}`);
  const child = startChild('docker-registry', '/usr/bin/docker-registry', ['serve', config], join(tmp, 'registry.log'));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.proc.exitCode !== null || child.proc.signalCode !== null) throw new Error(`docker-registry exited:\n${readFileSync(child.logPath, 'utf8')}`);
    try {
      const r = await fetch(`http://${host}/v2/`);
      await r.arrayBuffer();
      if (r.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`docker-registry did not answer on ${host}`);
    await sleep(50);
  }
  return { host, storage, child };
}

function blobPath(reg: Registry, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return join(reg.storage, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
}

function push(reg: Registry, tmp: string, layout: string, repo: string): void {
  const policy = join(tmp, 'policy.json');
  writeFileSync(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  const args = ['copy', '--preserve-digests', '--dest-tls-verify=false', '--policy', policy, `oci:${layout}:latest`, `docker://${reg.host}/${repo}:latest`];
  const r = spawnSync('skopeo', args, { encoding: 'utf8', env: { ...process.env, TMPDIR: tmp } });
  if (r.status !== 0) throw new Error(`skopeo ${args.join(' ')}: ${r.stderr}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Timed commands

interface Line {
  /** Seconds since the command started, when the chunk holding the line arrived. */
  t: number;
  stream: 'out' | 'err';
  text: string;
}

interface Timed {
  wall: number;
  lines: Line[];
  /** CPU seconds of the command and its children (reaped in the window: cutime+cstime of this process). */
  clientCpu: number;
}

/** cutime + cstime of this process: CPU of children that have exited and been waited for. */
function reapedChildrenCpu(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[13]) + Number(f[14])) / (cpuTck ??= Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100);
}
let cpuTck: number | undefined;

async function timed(cmd: string, args: string[]): Promise<Timed> {
  const lines: Line[] = [];
  const c0 = reapedChildrenCpu();
  const t0 = process.hrtime.bigint();
  const since = () => Number(process.hrtime.bigint() - t0) / 1e9;
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const child: Child = { name: cmd, proc, logPath: '', exited: new Promise((res) => proc.once('exit', () => res())) };
  env.children.push(child);
  const partial = { out: '', err: '' };
  const onData = (stream: 'out' | 'err') => (d: Buffer) => {
    const t = since();
    const parts = (partial[stream] + d.toString('utf8')).split(/\r?\n|\r/);
    partial[stream] = parts.pop()!;
    for (const text of parts) if (text.trim()) lines.push({ t, stream, text });
  };
  proc.stdout!.on('data', onData('out'));
  proc.stderr!.on('data', onData('err'));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((res, rej) => {
    proc.once('error', rej);
    proc.once('close', (c, s) => res([c, s]));
  });
  const wall = since();
  env.children.splice(env.children.indexOf(child), 1);
  for (const s of ['out', 'err'] as const) if (partial[s].trim()) lines.push({ t: wall, stream: s, text: partial[s] });
  if (code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited with ${code ?? signal}:\n${lines.slice(-40).map((l) => l.text).join('\n')}`);
  }
  return { wall, lines, clientCpu: reapedChildrenCpu() - c0 };
}

/** A Go time.Duration string ("146.4ms", "1.2345s", "2m3.5s", "850µs") in seconds. */
function parseGoDuration(s: string): number {
  const unit: Record<string, number> = { h: 3600, m: 60, s: 1, ms: 1e-3, 'µs': 1e-6, 'μs': 1e-6, us: 1e-6, ns: 1e-9 };
  let total = 0;
  let matched = '';
  for (const m of s.matchAll(/(\d+(?:\.\d+)?)(ms|µs|μs|us|ns|h|m|s)/g)) {
    total += Number(m[1]) * unit[m[2]!]!;
    matched += m[0];
  }
  if (matched !== s) throw new Error(`cannot parse duration ${s}`);
  return total;
}

// ---------------------------------------------------------------------------------------------------------------
// Measurements

const METHODS = ['containerd-ctr', 'strata-ctr', 'strata-cli', 'tar-gz', 'tar-plain', 'strata-ctr-erofs'] as const;
/** Measured unless --methods names others: the erofs snapshotter only when asked for (containerd 1.6 has none). */
const DEFAULT_METHODS = 'containerd-ctr,strata-ctr,strata-cli,tar-gz,tar-plain';
type Method = (typeof METHODS)[number];
const LABEL: Record<Method, string> = {
  'containerd-ctr': 'containerd (ctr)',
  'strata-ctr': 'stratad (ctr)',
  'strata-cli': 'stratad (strata)',
  'tar-gz': 'tar -xzf (floor)',
  'tar-plain': 'tar -xf, no gunzip',
  'strata-ctr-erofs': 'stratad (ctr, erofs)',
};
const daemonOf = (m: Method): DaemonName | undefined => (m === 'containerd-ctr' ? 'containerd' : m.startsWith('strata') ? 'strata' : undefined);

interface ImageDef {
  id: string;
  title: string;
  repo: string;
  source: SourceStats;
  layer: Layer;
  /** The layer blob as the registry stores it (the tar floor reads this file). */
  blob: string;
  /** The layer decompressed once, for the no-gunzip floor. */
  tarFile: string;
}

interface Result {
  round: number;
  position: number;
  image: string;
  method: Method;
  /** Pull wall time (the whole command); for tar: the extraction. */
  wall: number;
  /** Unpack seconds: ctr's printed duration, the strata CLI's unpacking→unpacked, tar's wall time. */
  unpack: number;
  /** The unpack window as observed from the output lines' arrival (ctr: "unpacking" → "done:"). */
  unpackObserved: number;
  daemonCpu: number;
  clientCpu: number;
  registryCpu: number;
  /** Entries found in the unpacked tree (without the root), expected layer.entries - 1. */
  entriesFound: number;
  cachesDropped: boolean;
}

/** Entries below `dir` (the directory itself not counted). */
function countEntries(dir: string): number {
  const r = spawnSync('find', [dir, '-mindepth', '1', '-printf', '.'], { encoding: 'utf8', maxBuffer: 1 << 28 });
  return r.stdout.length;
}

/** The unpacked layer's tree in an overlayfs snapshotter root (containerd's and Strata's layout: snapshots/<id>/fs). */
function snapshotEntries(root: string): number {
  const snaps = join(root, 'io.containerd.snapshotter.v1.overlayfs', 'snapshots');
  if (!existsSync(snaps)) return NaN;
  let n = 0;
  let found = false;
  for (const id of readdirSync(snaps)) {
    const fs = join(snaps, id, 'fs');
    if (existsSync(fs)) {
      n += countEntries(fs);
      found = true;
    }
  }
  return found ? n : NaN;
}

/** The entries of the layer images in an EROFS snapshotter root, each mounted read-only for the count. */
function erofsEntries(root: string): number {
  const snaps = join(root, 'io.containerd.snapshotter.v1.erofs', 'snapshots');
  if (!existsSync(snaps)) return NaN;
  let n = 0;
  let found = false;
  for (const id of readdirSync(snaps)) {
    const image = join(snaps, id, 'layer.erofs');
    if (!existsSync(image)) continue;
    const at = join(snaps, id, 'count');
    mkdirSync(at, { recursive: true });
    const m = spawnSync('mount', ['-t', 'erofs', '-o', 'ro,loop', image, at], { stdio: ['ignore', 'ignore', 'inherit'] });
    if (m.status !== 0) return NaN;
    try {
      n += countEntries(at);
      found = true;
    } finally {
      unmount(at);
    }
  }
  return found ? n : NaN;
}

/** Unmounts anything still mounted under `dir` (deepest first). */
function unmountUnder(dir: string): void {
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .map((p) => p.replace(/\\040/g, ' '))
    .filter((p) => p === dir || p.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    log(`warning: ${m} still mounted; unmounting`);
    unmount(m);
  }
}

class Daemons {
  versions: Partial<Record<DaemonName, string>> = {};
  constructor(
    readonly tmp: string,
    readonly mnt: string,
  ) {}

  private wipe(name: DaemonName): void {
    const root = join(this.mnt, name);
    unmountUnder(root);
    rmSync(root, { recursive: true, force: true });
    rmSync(join(this.tmp, name, 'state'), { recursive: true, force: true });
    rmSync(join(this.tmp, name, `${name}.sock`), { force: true });
  }

  async start(name: DaemonName): Promise<Daemon> {
    this.wipe(name);
    const d = name === 'strata' ? await startStrata(this.tmp, this.mnt) : await startContainerd(this.tmp, this.mnt);
    if (!this.versions[name]) {
      await fetchVersion(d, NAMESPACE);
      this.versions[name] = d.version;
    }
    return d;
  }

  async stop(d: Daemon): Promise<void> {
    await stopChild(d.child, d.name === 'strata' ? 15_000 : 5000);
    const i = env.children.indexOf(d.child);
    if (i >= 0) env.children.splice(i, 1);
    this.wipe(d.name);
  }
}

const STRATA_CLI = () => join(repoRoot, 'bin', 'strata');

async function measureDaemon(
  method: Method,
  img: ImageDef,
  reg: Registry,
  daemons: Daemons,
  round: number,
  position: number,
): Promise<Result> {
  const d = await daemons.start(daemonOf(method)!);
  try {
    const ref = `${reg.host}/${img.repo}:latest`;
    const ctr = (sub: string[]) => ['-a', d.socket, '-n', NAMESPACE, ...sub];
    const strata = (sub: string[]) => [STRATA_CLI(), '-a', d.socket, '-n', NAMESPACE, ...sub];
    const cachesDropped = dropCaches();
    // Warm the client's own code (not the data): ctr's binary, or node and the CLI's modules.
    if (method === 'strata-cli') await timed(process.execPath, strata(['version']));
    else await timed('ctr', ctr(['version']));
    await sleep(300);
    const r0 = cpuSeconds(reg.child.proc.pid);
    const d0 = cpuSeconds(d.child.proc.pid);
    let t: Timed;
    let unpack: number;
    let unpackObserved: number;
    if (method === 'strata-cli') {
      t = await timed(process.execPath, strata(['image', 'pull', '--plain-http', ref]));
      const start = t.lines.find((l) => l.stream === 'err' && /^layer \S+: unpacking/.test(l.text));
      const end = t.lines.find((l) => l.stream === 'err' && /^layer \S+: unpacked/.test(l.text));
      if (!start || !end) throw new Error(`strata image pull: no unpacking/unpacked lines:\n${t.lines.map((l) => l.text).join('\n')}`);
      unpack = unpackObserved = end.t - start.t;
    } else {
      const snapshotter = method === 'strata-ctr-erofs' ? ['--snapshotter', 'erofs'] : [];
      t = await timed('ctr', ctr(['image', 'pull', '--plain-http', ...snapshotter, ref]));
      const start = t.lines.find((l) => l.stream === 'out' && /^unpacking /.test(l.text));
      const done = t.lines.find((l) => l.stream === 'out' && /^done: /.test(l.text));
      if (!start || !done) throw new Error(`ctr image pull: no unpacking/done lines:\n${t.lines.slice(-20).map((l) => l.text).join('\n')}`);
      unpack = parseGoDuration(done.text.slice('done: '.length).trim());
      unpackObserved = done.t - start.t;
    }
    const daemonCpu = cpuSeconds(d.child.proc.pid) - d0;
    const registryCpu = cpuSeconds(reg.child.proc.pid) - r0;
    const entriesFound = method === 'strata-ctr-erofs' ? erofsEntries(d.root) : snapshotEntries(d.root);
    return {
      round,
      position,
      image: img.id,
      method,
      wall: t.wall,
      unpack,
      unpackObserved,
      daemonCpu,
      clientCpu: t.clientCpu,
      registryCpu,
      entriesFound,
      cachesDropped,
    };
  } finally {
    await daemons.stop(d);
  }
}

async function measureTar(method: Method, img: ImageDef, mnt: string, round: number, position: number): Promise<Result> {
  const dir = join(mnt, 'tar-floor');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir);
  try {
    const cachesDropped = dropCaches();
    await timed('tar', ['--version']);
    await timed('gzip', ['--version']);
    // The input in the page cache, as the daemons have it when they unpack (they have just written the blob).
    const input = method === 'tar-gz' ? img.blob : img.tarFile;
    spawnSync('cat', [input], { stdio: ['ignore', 'ignore', 'inherit'] });
    await sleep(300);
    const t = method === 'tar-gz' ? await timed('tar', ['-xzf', img.blob, '-C', dir]) : await timed('tar', ['-xf', img.tarFile, '-C', dir]);
    return {
      round,
      position,
      image: img.id,
      method,
      wall: t.wall,
      unpack: t.wall,
      unpackObserved: t.wall,
      daemonCpu: NaN,
      clientCpu: t.clientCpu,
      registryCpu: NaN,
      entriesFound: countEntries(dir),
      cachesDropped,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const args = parseBenchArgs(
    {
      rounds: '3',
      images: 'a,b,c',
      'big-rounds': '',
      'base-files': '10000',
      'base-size': '200MB',
      'small-files': '50000',
      'big-size': '1G',
      methods: DEFAULT_METHODS,
    },
    usage,
  );
  if (!args) return;
  const { values, common } = args;
  const rounds = intOption('rounds', values.rounds!);
  const bigRounds = values['big-rounds'] ? intOption('big-rounds', values['big-rounds']) : rounds;
  const baseFiles = intOption('base-files', values['base-files']!);
  const baseSize = parseSize(values['base-size']!);
  const smallFiles = intOption('small-files', values['small-files']!);
  const bigSize = parseSize(values['big-size']!);
  const ids = values.images!.split(',').map((x) => x.trim());
  for (const i of ids) if (!['a', 'b', 'c'].includes(i)) throw new Error(`unknown image ${i} (a, b or c)`);
  const wanted = values.methods!.split(',').map((x) => x.trim());
  for (const m of wanted) if (!(METHODS as readonly string[]).includes(m)) throw new Error(`unknown method ${m} (${METHODS.join(', ')})`);
  const methods = METHODS.filter((m) => {
    if (!wanted.includes(m)) return false;
    const d = daemonOf(m);
    return !d || common.daemons.includes(d);
  });
  env.keepTmp = common.keep;
  if (process.getuid?.() !== 0) throw new Error('must run as root (loop mount, drop_caches, tar restoring owners)');

  const command = commandLine();
  const started = new Date();
  const load0 = machineInfo().loadavg;
  const { tmpRoot, img, mnt } = benchDirs(common.imageDir);
  // Registry blobs + layouts (compressed twice), decompressed tars, one daemon root or tar target at a time.
  const needGiB = Math.ceil((4 * (1 << 30) + (ids.includes('c') ? 7 * bigSize : 0)) / (1 << 30));
  const imageSize = `${needGiB}G`;

  const images: ImageDef[] = [];
  const results: Result[] = [];
  const loads: number[][] = [];
  const daemons = new Daemons(tmpRoot, mnt);
  let buildSeconds = 0;
  try {
    mountLoopExt4(img, mnt, imageSize);
    const reg = await startRegistry(tmpRoot, join(mnt, 'registry'));

    // Build and push the images.
    const b0 = process.hrtime.bigint();
    const pools = makePools();
    for (const id of ids) {
      const src = join(mnt, 'src', id);
      mkdirSync(src, { recursive: true });
      const g0 = process.hrtime.bigint();
      const source =
        id === 'a' ? genBase(src, pools, baseFiles, baseSize) : id === 'b' ? genSmall(src, pools, smallFiles) : genBig(src, pools, bigSize);
      spawnSync('sync');
      const g1 = process.hrtime.bigint();
      const layout = join(mnt, 'layouts', id);
      const tarFile = join(mnt, 'tars', `${id}.tar`);
      mkdirSync(dirname(tarFile), { recursive: true });
      const layer = await buildImage(src, layout, tarFile, id === 'c' ? 1 : 6);
      rmSync(src, { recursive: true, force: true });
      const repo = `bench-${id}`;
      push(reg, tmpRoot, layout, repo);
      const blob = blobPath(reg, layer.digest);
      if (!existsSync(blob) || statSync(blob).size !== layer.size) throw new Error(`layer ${layer.digest} not in the registry storage at ${blob}`);
      rmSync(layout, { recursive: true, force: true });
      const title =
        id === 'a'
          ? `(a) base-OS-like: ${source.files} files, ${source.dirs} dirs, ${source.symlinks} symlinks, ${source.hardlinks} hard links`
          : id === 'b'
            ? `(b) ${source.files} small files (512-1536 B) in ${source.dirs} dirs`
            : `(c) one file of ${formatBytes(bigSize)}`;
      images.push({ id, title, repo, source, layer, blob, tarFile });
      log(
        `image ${id}: ${title}; ${layer.entries} tar entries, ${(layer.tarSize / MB).toFixed(1)} MB tar, ` +
          `${(layer.size / MB).toFixed(1)} MB gzip (${((100 * layer.size) / layer.tarSize).toFixed(0)}%); ` +
          `generated in ${(Number(g1 - g0) / 1e9).toFixed(1)} s, total ${(Number(process.hrtime.bigint() - g0) / 1e9).toFixed(1)} s`,
      );
    }
    rmSync(join(mnt, 'src'), { recursive: true, force: true });
    rmSync(join(mnt, 'layouts'), { recursive: true, force: true });
    buildSeconds = Number(process.hrtime.bigint() - b0) / 1e9;

    for (let r = 1; r <= rounds; r++) {
      const order = r % 2 === 1 ? methods : [...methods].reverse();
      for (const im of images) {
        if (im.id === 'c' && r > bigRounds) continue;
        for (const [i, m] of order.entries()) {
          const load = machineInfo().loadavg;
          loads.push(load);
          log(`round ${r}/${rounds}, image ${im.id}: ${LABEL[m]} (${i + 1}/${order.length}); loadavg ${load.map(f2).join(' ')}`);
          const res = daemonOf(m) ? await measureDaemon(m, im, reg, daemons, r, i + 1) : await measureTar(m, im, mnt, r, i + 1);
          if (res.entriesFound !== im.layer.entries - 1) {
            log(`warning: ${LABEL[m]} left ${res.entriesFound} entries, the layer has ${im.layer.entries - 1} (without "./")`);
          }
          log(
            `  wall ${f3(res.wall)} s, unpack ${f3(res.unpack)} s (observed ${f3(res.unpackObserved)} s) = ` +
              `${f1(im.layer.tarSize / MB / res.unpack)} MB/s, ${f0(im.layer.entries / res.unpack)} files/s; ` +
              `CPU s daemon ${f2(res.daemonCpu)} client ${f2(res.clientCpu)} registry ${f2(res.registryCpu)}`,
          );
          results.push(res);
        }
      }
    }
  } catch (err) {
    reportFailure();
    throw err;
  } finally {
    await cleanup();
  }

  // ----- Reporting
  const machine = machineInfo();
  const summary: Record<string, Partial<Record<Method, { wall: number; unpack: number; unpackMBps: number; filesPerSec: number; daemonCpu: number; clientCpu: number; n: number }>>> = {};
  const ratios: Record<string, Record<string, number>> = {};
  for (const im of images) {
    summary[im.id] = {};
    for (const m of methods) {
      const rs = results.filter((r) => r.image === im.id && r.method === m);
      if (rs.length === 0) continue;
      const unpack = median(rs.map((r) => r.unpack));
      summary[im.id]![m] = {
        wall: median(rs.map((r) => r.wall)),
        unpack,
        unpackMBps: median(rs.map((r) => im.layer.tarSize / MB / r.unpack)),
        filesPerSec: median(rs.map((r) => im.layer.entries / r.unpack)),
        daemonCpu: median(rs.map((r) => r.daemonCpu)),
        clientCpu: median(rs.map((r) => r.clientCpu)),
        n: rs.length,
      };
    }
    const s = summary[im.id]!;
    const q = (a: number | undefined, b: number | undefined) => (a !== undefined && b !== undefined ? a / b : NaN);
    ratios[im.id] = {
      'stratad(ctr) / containerd(ctr), pull wall': q(s['strata-ctr']?.wall, s['containerd-ctr']?.wall),
      'stratad(ctr) / containerd(ctr), unpack': q(s['strata-ctr']?.unpack, s['containerd-ctr']?.unpack),
      'stratad(strata) / containerd(ctr), pull wall': q(s['strata-cli']?.wall, s['containerd-ctr']?.wall),
      'stratad(strata) / containerd(ctr), unpack': q(s['strata-cli']?.unpack, s['containerd-ctr']?.unpack),
      'stratad(ctr) unpack / tar -xzf': q(s['strata-ctr']?.unpack, s['tar-gz']?.unpack),
      'stratad(strata) unpack / tar -xzf': q(s['strata-cli']?.unpack, s['tar-gz']?.unpack),
      'containerd(ctr) unpack / tar -xzf': q(s['containerd-ctr']?.unpack, s['tar-gz']?.unpack),
      'stratad(ctr) erofs / overlayfs, unpack': q(s['strata-ctr-erofs']?.unpack, s['strata-ctr']?.unpack),
      'stratad(ctr) erofs / overlayfs, pull wall': q(s['strata-ctr-erofs']?.wall, s['strata-ctr']?.wall),
    };
  }

  const out = {
    benchmark: 'pull',
    date: started.toISOString(),
    command,
    params: { rounds, bigRounds, images: ids, baseFiles, baseSize, smallFiles, bigSize },
    namespace: NAMESPACE,
    filesystem: `fresh ${imageSize} ext4 on a loop device backed by ${env.imageFile} (registry storage, daemon roots, tar targets)`,
    machine: { ...machine, loadavgAtStart: load0, loadavgPerMeasurement: loads },
    daemons: daemons.versions,
    buildSeconds,
    images: images.map((i) => ({ id: i.id, title: i.title, source: i.source, layer: i.layer })),
    summary,
    ratios,
    results,
  };

  const lines: string[] = [];
  lines.push(`Pull + unpack from a local registry: ${images.map((i) => i.id).join(', ')}; ${rounds} round(s) (c: ${Math.min(rounds, bigRounds)}), order reversed every other round`);
  lines.push(`command: ${command}`);
  lines.push(
    `date: ${out.date}; ${machine.nproc} cores (${machine.cpu}), ${machine.memTotalMiB} MiB RAM, node ${machine.node}; ` +
      `loadavg at start ${load0.map(f2).join(' ')}, at end ${machine.loadavg.map(f2).join(' ')}`,
  );
  lines.push(`file system: ${out.filesystem}`);
  lines.push(`daemons: ${Object.entries(daemons.versions).map(([k, v]) => `${k} ${v}`).join('; ')}; images built and pushed in ${buildSeconds.toFixed(1)} s`);
  lines.push(`page caches dropped before every measurement: ${results.every((r) => r.cachesDropped) ? 'yes' : 'NO'}`);
  for (const im of images) {
    const s = summary[im.id]!;
    lines.push('');
    lines.push(
      `${im.title}: ${f0(im.layer.entries)} tar entries, ${(im.layer.tarSize / MB).toFixed(1)} MB uncompressed, ` +
        `${(im.layer.size / MB).toFixed(1)} MB gzip (-${im.id === 'c' ? 1 : 6})`,
    );
    const rows = [[`median of ${s[methods[0]!]?.n ?? 0}`, 'pull wall s', 'unpack s', 'unpack MB/s', 'files/s', 'daemon CPU s', 'client CPU s']];
    for (const m of methods) {
      const x = s[m];
      if (!x) continue;
      rows.push([LABEL[m], daemonOf(m) ? f3(x.wall) : '-', f3(x.unpack), f1(x.unpackMBps), f0(x.filesPerSec), f2(x.daemonCpu), f2(x.clientCpu)]);
    }
    lines.push(table(rows));
    lines.push(table([['ratio', 'x'], ...Object.entries(ratios[im.id]!).filter(([, v]) => Number.isFinite(v)).map(([k, v]) => [k, f2(v)])]));
  }
  lines.push('');
  lines.push('all measurements (unpack: ctr\'s printed "done:" / strata CLI unpacking→unpacked / tar wall; observed: from line arrival times):');
  lines.push(
    table([
      ['round', 'pos', 'image', 'method', 'wall s', 'unpack s', 'observed s', 'CPU s daemon/client/registry', 'entries'],
      ...results.map((r) => [
        String(r.round),
        String(r.position),
        r.image,
        LABEL[r.method],
        f3(r.wall),
        f3(r.unpack),
        f3(r.unpackObserved),
        `${f2(r.daemonCpu)} / ${f2(r.clientCpu)} / ${f2(r.registryCpu)}`,
        String(r.entriesFound),
      ]),
    ]),
  );
  const text = lines.join('\n') + '\n';
  if (common.json) {
    process.stderr.write(text);
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  } else {
    process.stdout.write(text);
  }
}

main().then(
  () => process.exit(0),
  async (err) => {
    process.stderr.write(`pull: ${err instanceof Error ? err.message : String(err)}\n`);
    await cleanup().catch(() => undefined);
    process.exit(1);
  },
);
