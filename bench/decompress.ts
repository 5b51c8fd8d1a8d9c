/**
 * Layer decompression throughput: node's zlib gunzip (default 16 KiB output chunks, and 1 MiB as decompressStream
 * uses), zlib-sync wrapped as a Transform, and zstd through zstd-napi (decompressStream), each fed 64 KiB and
 * 1 MiB input chunks, with `gzip -dc` / `zstd -dc` child
 * processes for reference. Input is a deterministic ~230 MB layer-like tar (24,000 small files and four 26 MiB
 * ones; text-like and mixed binary content) made with GNU tar and compressed with `gzip -6` and `zstd -3`.
 * Each round reads the compressed file from the page cache, decompresses it and counts the bytes (the
 * "/dev/null" sink); the figure is uncompressed MB (10^6 bytes) per second of wall time, median of the rounds.
 *
 *   npm run build && node dist/bench/decompress.js [--rounds 3] [--dir /tmp/strata-decomp] [--regen]
 */
import { spawn, spawnSync } from 'node:child_process';
import { createReadStream, existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import zlib from 'node:zlib';
import zlibSync from 'zlib-sync';
import { decompressStream } from '../src/diff/decompress.js';
import { commandLine, f1, machineInfo, median, table } from './lib.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : dflt;
};
const rounds = Number(opt('rounds', '3'));
const dir = opt('dir', '/tmp/strata-decomp');
const regen = args.includes('--regen');

// ---------------------------------------------------------------------------------------------------------------
// Data

function xorshift(seed: number) {
  let s = seed >>> 0;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

function generate(): void {
  const tree = join(dir, 'tree');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(tree, { recursive: true });
  const rnd = xorshift(0x9e3779b9);
  const words: string[] = [];
  for (let i = 0; i < 4096; i++) {
    let w = '';
    const n = 2 + (rnd() % 9);
    for (let j = 0; j < n; j++) w += String.fromCharCode(97 + (rnd() % 26));
    words.push(w);
  }
  const text = (n: number) => {
    const parts: string[] = [];
    let len = 0;
    while (len < n) {
      const w = words[rnd() % 4096]! + (rnd() % 12 === 0 ? '\n' : ' ');
      parts.push(w);
      len += w.length;
    }
    return Buffer.from(parts.join('')).subarray(0, n);
  };
  const binary = (n: number) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = rnd() & 0xff;
    return b;
  };
  const mixed = (n: number) => {
    const b = Buffer.alloc(n);
    for (let o = 0; o < n; o += 4096) {
      const k = Math.min(n - o, 4096);
      (rnd() % 3 === 0 ? binary(k) : text(k)).copy(b, o);
    }
    return b;
  };
  for (let i = 0; i < 24000; i++) {
    const d = join(tree, 'usr', `d${i % 300}`);
    mkdirSync(d, { recursive: true });
    const n = 200 + (rnd() % 8000);
    writeFileSync(join(d, `f${i}.txt`), i % 5 === 0 ? mixed(n) : text(n));
  }
  mkdirSync(join(tree, 'big'));
  for (let i = 0; i < 4; i++) writeFileSync(join(tree, 'big', `blob${i}`), i % 2 ? mixed(26 << 20) : text(26 << 20));
  const sh = (cmd: string) => {
    const r = spawnSync('sh', ['-c', cmd], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error(`${cmd} failed`);
  };
  sh(`tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C '${tree}' -cf '${dir}/layer.tar' .`);
  sh(`gzip -6 -c '${dir}/layer.tar' > '${dir}/layer.tar.gz'`);
  sh(`zstd -3 -q -f '${dir}/layer.tar' -o '${dir}/layer.tar.zst'`);
  rmSync(tree, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------------------------
// zlib-sync as a stream

/**
 * zlib-sync's Inflate as a Transform. It inflates on the main thread, synchronously, one input chunk per push
 * with Z_SYNC_FLUSH; the result is copied out of the binding's buffer. It cannot continue after the end of the
 * first gzip member (the binding does not tell how much input it consumed), so concatenated members are lost:
 * here that is reported as an error rather than ignored.
 */
class ZlibSyncGunzip extends Transform {
  private readonly inf = new zlibSync.Inflate({ chunkSize: 128 * 1024, windowBits: 15 + 16 });
  private ended = false;

  private step(chunk: Buffer): Error | undefined {
    this.inf.push(chunk, zlibSync.Z_SYNC_FLUSH);
    const err = this.inf.err;
    if (err < 0 && err !== zlibSync.Z_BUF_ERROR) return new Error(`zlib-sync: ${this.inf.msg ?? err}`);
    const out = this.inf.result as Buffer | null;
    if (out && out.length > 0) this.push(out);
    if (err === zlibSync.Z_STREAM_END) this.ended = true;
    return undefined;
  }

  /** Output that did not fit the binding's buffer on the last push comes out on the next (empty) ones. */
  private drain(): Error | undefined {
    for (;;) {
      if (this.ended) return undefined;
      this.inf.push(Buffer.alloc(0), zlibSync.Z_SYNC_FLUSH);
      const err = this.inf.err;
      if (err < 0 && err !== zlibSync.Z_BUF_ERROR) return new Error(`zlib-sync: ${this.inf.msg ?? err}`);
      const out = this.inf.result as Buffer | null;
      if (err === zlibSync.Z_STREAM_END) this.ended = true;
      if (!out || out.length === 0) return undefined;
      this.push(out);
    }
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.ended) {
      cb(new Error('zlib-sync: data after the end of the gzip member (multi-member gzip is not supported)'));
      return;
    }
    cb(this.step(chunk) ?? this.drain());
  }

  override _flush(cb: TransformCallback): void {
    const e = this.drain();
    if (e) cb(e);
    else if (!this.ended) cb(new Error('zlib-sync: unexpected end of file'));
    else cb();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Measurement

async function countBytes(s: Readable): Promise<number> {
  let n = 0;
  for await (const chunk of s) n += (chunk as Buffer).length;
  return n;
}

function childCount(cmd: string, file: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, ['-dc', file], { stdio: ['ignore', 'pipe', 'inherit'] });
    let n = 0;
    p.stdout.on('data', (c: Buffer) => (n += c.length));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(n) : reject(new Error(`${cmd} exited ${code}`))));
  });
}

interface Case {
  name: string;
  file: 'gz' | 'zst';
  run: (file: string) => Promise<number>;
}

const KiB = 1024;
const MiB = 1 << 20;
/** The compressed file as a stream of `chunk`-byte reads (64 KiB is fs.createReadStream's default). */
const src = (f: string, chunk: number) => createReadStream(f, { highWaterMark: chunk });

const cases: Case[] = [
  { name: 'zlib.createGunzip() (16 KiB out), 64 KiB in', file: 'gz', run: (f) => countBytes(src(f, 64 * KiB).pipe(zlib.createGunzip())) },
  { name: 'decompressStream gzip (1 MiB out), 64 KiB in', file: 'gz', run: (f) => countBytes(decompressStream(src(f, 64 * KiB), 'gzip')) },
  { name: 'decompressStream gzip (1 MiB out), 1 MiB in', file: 'gz', run: (f) => countBytes(decompressStream(src(f, MiB), 'gzip')) },
  { name: 'zlib-sync Transform, 64 KiB in', file: 'gz', run: (f) => countBytes(src(f, 64 * KiB).pipe(new ZlibSyncGunzip())) },
  { name: 'zlib-sync Transform, 1 MiB in', file: 'gz', run: (f) => countBytes(src(f, MiB).pipe(new ZlibSyncGunzip())) },
  { name: 'gzip -dc (child process)', file: 'gz', run: (f) => childCount('gzip', f) },
  { name: 'decompressStream zstd (zstd-napi), 64 KiB in', file: 'zst', run: (f) => countBytes(decompressStream(src(f, 64 * KiB), 'zstd')) },
  { name: 'decompressStream zstd (zstd-napi), 1 MiB in', file: 'zst', run: (f) => countBytes(decompressStream(src(f, MiB), 'zstd')) },
  { name: "decompressStream 'detect' on zstd, 64 KiB in", file: 'zst', run: (f) => countBytes(decompressStream(src(f, 64 * KiB), 'detect')) },
  { name: 'zstd -dc (child process)', file: 'zst', run: (f) => childCount('zstd', f) },
];

async function main(): Promise<void> {
  const tar = join(dir, 'layer.tar');
  if (regen || !existsSync(`${tar}.gz`) || !existsSync(`${tar}.zst`)) generate();
  const size = statSync(tar).size;
  const gzSize = statSync(`${tar}.gz`).size;
  const zstSize = statSync(`${tar}.zst`).size;
  console.log(JSON.stringify({ command: commandLine(), tarBytes: size, gzBytes: gzSize, zstBytes: zstSize, rounds, machine: machineInfo() }));
  const rows: string[][] = [['implementation', 'input', 'MB/s (median)', 'rounds MB/s']];
  for (const c of cases) {
    const file = c.file === 'gz' ? `${tar}.gz` : `${tar}.zst`;
    await c.run(file); // warm the page cache and the code
    const rates: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const t0 = process.hrtime.bigint();
      const n = await c.run(file);
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      if (n !== size) throw new Error(`${c.name}: ${n} bytes out, expected ${size}`);
      rates.push(n / 1e6 / s);
    }
    rows.push([c.name, c.file === 'gz' ? 'gzip -6' : 'zstd -3', f1(median(rates)), rates.map(f1).join(' ')]);
    process.stderr.write(`${c.name}: ${f1(median(rates))} MB/s\n`);
  }
  console.log(table(rows));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
