/**
 * A generator of malformed layer tars for fuzzing the applier. Every case is a pure function of its seed (a
 * 32-bit integer; the same seed gives the same bytes on any machine, given the same `escapes`): a failing seed
 * printed by a test or by bench/fuzz.ts is the whole reproduction.
 *
 * What a case may hold, mixed at random: ustar/GNU/v7 headers written field by field (random sizes, modes,
 * uid/gid, mtimes, numbers in octal, base-256 or garbage, checksums right, wrong or signed), every typeflag and
 * unknown ones, names with `..`, absolute names, NULs, invalid UTF-8 and very long names, the ustar prefix, GNU
 * long names and long links ('L'/'K'), PAX records (valid, truncated, huge or bad lengths, bad keys, path and
 * linkpath overrides, xattrs, GNU sparse keys), global headers, sparse headers ('S'), whiteouts (`.wh.*`,
 * `.wh..wh..opq`) in odd places, hardlinks and symlinks pointing out of the root, at each other or at the
 * sentinel tree the test watches, entry data shorter or longer than declared, archives cut anywhere, trailing
 * garbage, and a gzip or zstd wrapper, sometimes corrupted or mislabelled.
 *
 * The generator writes raw bytes itself (not tar-stream, not src/diff/tar.ts's encoder): both refuse to write
 * most of what is interesting here.
 */
import { gzipSync } from 'node:zlib';
import { compress as zstdCompress } from 'zstd-napi';

/** A small, fast, seedable PRNG (mulberry32): every draw is reproducible from the seed. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return n <= 0 ? 0 : this.u32() % n;
  }
  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  /** Weighted choice: [weight, value] pairs. */
  weighted<T>(choices: readonly (readonly [number, T])[]): T {
    const total = choices.reduce((s, [w]) => s + w, 0);
    let r = this.int(total);
    for (const [w, v] of choices) {
      if (r < w) return v;
      r -= w;
    }
    return choices[choices.length - 1]![1];
  }
}

export const MEDIA_TAR = 'application/vnd.oci.image.layer.v1.tar';
export const MEDIA_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
export const MEDIA_ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd';
export const MEDIA_DOCKER = 'application/vnd.docker.image.rootfs.diff.tar.gzip';

/** Top-level names a case may use for absolute paths that would escape to the host's `/`: the test checks none appears. */
export const HOST_ESCAPE_PREFIX = 'strata-fuzz-escape-';

export interface GenOptions {
  /**
   * Paths outside the target the test watches (absolute, and relative from the target's parent chain, e.g.
   * '../../../sentinel'): names, symlinks and hardlinks aim at them.
   */
  escapes?: string[];
  /**
   * A gentle case: well-formed headers and archives with hostile names, links and whiteouts (reaches the file
   * calls); default a hostile one (anything goes, most fail in the parser). A case is (seed, gentle).
   */
  gentle?: boolean;
}

export interface FuzzCase {
  seed: number;
  /** The uncompressed tar as generated (before any wrapper and its corruption). */
  tar: Buffer;
  /** The blob: the tar, maybe compressed, maybe corrupted. */
  blob: Buffer;
  mediaType: string;
  /** Whether the wrapper was corrupted or mislabelled (then the diffID is not that of `tar`). */
  wrapperDamaged: boolean;
  /** A one-line account of what the case holds (for a failing seed's report). */
  summary: string[];
}

const BLOCK = 512;

type NumForm = 'octal' | 'octal-space' | 'base256' | 'garbage' | 'empty' | 'overflow';

interface RawHeader {
  name: Buffer;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  typeflag: string;
  linkname: Buffer;
  magic: 'ustar' | 'gnu' | 'v7' | 'garbage';
  uname?: string;
  prefix?: Buffer;
  devmajor?: number;
  devminor?: number;
  checksum: 'right' | 'wrong' | 'signed' | 'garbage';
  /** Per-field number forms (default octal). */
  forms?: Partial<Record<'mode' | 'uid' | 'gid' | 'size' | 'mtime' | 'devmajor' | 'devminor', NumForm>>;
}

function putBytes(b: Buffer, off: number, len: number, v: Buffer): void {
  v.copy(b, off, 0, Math.min(len, v.length));
}

function putNum(b: Buffer, off: number, len: number, v: number, form: NumForm, rng: Rng): void {
  switch (form) {
    case 'octal': {
      const s = Math.max(0, Math.floor(v)).toString(8);
      b.write(s.slice(-(len - 1)).padStart(len - 1, '0'), off, len - 1, 'latin1');
      b[off + len - 1] = 0;
      return;
    }
    case 'octal-space': {
      const s = Math.max(0, Math.floor(v)).toString(8);
      b.write(` ${s}`.slice(-(len - 1)).padStart(len - 1, ' '), off, len - 1, 'latin1');
      b[off + len - 1] = 0x20;
      return;
    }
    case 'base256': {
      // GNU base-256: high bit set, big-endian; sometimes negative (0xff...).
      b.fill(0, off, off + len);
      let x = BigInt(Math.floor(Math.abs(v)));
      for (let i = off + len - 1; i > off && x > 0n; i--) {
        b[i] = Number(x & 0xffn);
        x >>= 8n;
      }
      b[off] = rng.chance(0.15) ? 0xff : 0x80;
      return;
    }
    case 'garbage':
      rng.bytes(len).copy(b, off);
      return;
    case 'empty':
      b.fill(0, off, off + len);
      return;
    case 'overflow':
      b.write('7'.repeat(len), off, len, 'latin1');
      return;
  }
}

function headerBlock(h: RawHeader, rng: Rng): Buffer {
  const b = Buffer.alloc(BLOCK);
  const f = h.forms ?? {};
  putBytes(b, 0, 100, h.name);
  putNum(b, 100, 8, h.mode, f.mode ?? 'octal', rng);
  putNum(b, 108, 8, h.uid, f.uid ?? 'octal', rng);
  putNum(b, 116, 8, h.gid, f.gid ?? 'octal', rng);
  putNum(b, 124, 12, h.size, f.size ?? 'octal', rng);
  putNum(b, 136, 12, h.mtime, f.mtime ?? 'octal', rng);
  b.fill(0x20, 148, 156);
  b.write(h.typeflag.slice(0, 1), 156, 1, 'latin1');
  putBytes(b, 157, 100, h.linkname);
  switch (h.magic) {
    case 'ustar':
      b.write('ustar\x0000', 257, 8, 'latin1');
      break;
    case 'gnu':
      b.write('ustar  \x00', 257, 8, 'latin1');
      break;
    case 'garbage':
      rng.bytes(8).copy(b, 257);
      break;
    case 'v7':
      break;
  }
  if (h.uname) b.write(h.uname, 265, 32, 'utf8');
  if (h.devmajor !== undefined) putNum(b, 329, 8, h.devmajor, f.devmajor ?? 'octal', rng);
  if (h.devminor !== undefined) putNum(b, 337, 8, h.devminor, f.devminor ?? 'octal', rng);
  if (h.prefix) putBytes(b, 345, 155, h.prefix);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    unsigned += b[i]!;
    signed += b[i]! > 127 ? b[i]! - 256 : b[i]!;
  }
  switch (h.checksum) {
    case 'right':
      b.write(`${unsigned.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
      break;
    case 'signed':
      b.write(`${(signed < 0 ? 0 : signed).toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
      break;
    case 'wrong':
      b.write(`${((unsigned + 1 + rng.int(1000)) & 0o777777).toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
      break;
    case 'garbage':
      rng.bytes(8).copy(b, 148);
      break;
  }
  return b;
}

const pad = (n: number) => Buffer.alloc((BLOCK - (n % BLOCK)) % BLOCK);

function paxRecord(key: Buffer | string, value: Buffer | string): Buffer {
  const k = Buffer.isBuffer(key) ? key : Buffer.from(key);
  const v = Buffer.isBuffer(value) ? value : Buffer.from(value);
  const rest = k.length + v.length + 3;
  let len = rest + String(rest).length;
  if (String(len).length !== String(rest).length) len = rest + String(len).length;
  return Buffer.concat([Buffer.from(`${len} `), k, Buffer.from('='), v, Buffer.from('\n')]);
}

/** Everything one case's entries are built from. */
class Builder {
  readonly parts: Buffer[] = [];
  readonly summary: string[] = [];
  /** Names written so far (cleaned or not): later entries link to them, replace them, white them out. */
  readonly names: string[] = [];
  readonly dirs: string[] = [];

  constructor(
    readonly rng: Rng,
    readonly escapes: string[],
    /**
     * A gentle case keeps every header well-formed (right checksums, plain numbers, known types, whole
     * archives, intact wrappers), so that it gets past the parser and reaches the file calls with its hostile
     * names, links and whiteouts. Hostile cases draw exactly as before gentle cases existed (their seeds
     * are regression cases).
     */
    readonly gentle = false,
  ) {}

  note(s: string): void {
    if (this.summary.length < 40) this.summary.push(s);
  }

  component(): string {
    const r = this.rng;
    if (this.gentle) {
      return r.weighted<() => string>([
        [30, () => r.pick(['a', 'b', 'c', 'etc', 'bin', 'tmp', 'usr', 'lib', 'x', 'root', 'up', 'sent', 'senta', 'self', 'loop1'])],
        [6, () => '..'],
        [3, () => '.'],
        [4, () => r.pick(['.wh.a', '.wh.etc', '.wh..wh..opq', '.wh.x'])],
        [2, () => 'ü-ñ-日本'],
        [2, () => `${HOST_ESCAPE_PREFIX}${r.int(10)}`],
        [3, () => `f${r.int(1000)}`],
      ])();
    }
    return r.weighted<() => string>([
      [30, () => r.pick(['a', 'b', 'c', 'etc', 'bin', 'tmp', 'usr', 'lib', 'x'])],
      [6, () => '..'],
      [3, () => '.'],
      [2, () => ''],
      [4, () => r.pick(['.wh.a', '.wh.etc', '.wh..wh..opq', '.wh.', '.wh..', '.wh...', '.wh.x.wh.y'])],
      [3, () => 'n'.repeat(r.pick([100, 155, 255, 256, 300]))],
      [2, () => `bad\u0000nul`],
      [2, () => Buffer.from([0x66, 0xff, 0xfe, 0x80]).toString('latin1')],
      [2, () => 'ü-ñ-日本'],
      [2, () => `${HOST_ESCAPE_PREFIX}${r.int(10)}`],
      [3, () => `f${r.int(1000)}`],
    ])();
  }

  /** A name for an entry: random components, maybe absolute, maybe aimed at the sentinel, maybe huge. */
  name(): string {
    const r = this.rng;
    if (this.gentle) {
      return r.weighted<() => string>([
        [40, () => Array.from({ length: r.range(1, 4) }, () => this.component()).join('/')],
        [12, () => (this.names.length > 0 ? r.pick(this.names) : 'a')],
        [8, () => `${r.pick(this.dirs.length > 0 ? this.dirs : ['etc'])}/${this.component()}`],
        [6, () => `/${HOST_ESCAPE_PREFIX}${r.int(10)}${r.chance(0.5) ? `/${this.component()}` : ''}`],
        [6, () => `${'../'.repeat(r.range(1, 12))}${HOST_ESCAPE_PREFIX}${r.int(10)}`],
        [8, () => (this.escapes.length > 0 ? `${r.pick(this.escapes)}/${r.pick(['a', 'dir/b', 'new', 'dir', 'dir/new'])}` : 'a')],
        [8, () => `${r.pick(['root', 'up', 'sent', 'senta', 'b', 'c', 'lib', 'self', 'loop1'])}/${this.component()}`],
        [4, () => `${this.symlinkName()}/${this.component()}`],
        [3, () => `${r.pick(this.dirs.length > 0 ? this.dirs : ['a'])}/.wh..wh..opq`],
        [3, () => `${this.names.length > 0 ? r.pick(this.names) : 'a'}/.wh.${this.component()}`],
      ])();
    }
    return r.weighted<() => string>([
      [40, () => Array.from({ length: r.range(1, 4) }, () => this.component()).join('/')],
      [12, () => (this.names.length > 0 ? r.pick(this.names) : 'a')],
      [8, () => `${r.pick(this.dirs.length > 0 ? this.dirs : ['etc'])}/${this.component()}`],
      [6, () => `/${HOST_ESCAPE_PREFIX}${r.int(10)}${r.chance(0.5) ? `/${this.component()}` : ''}`],
      [6, () => `${'../'.repeat(r.range(1, 12))}${HOST_ESCAPE_PREFIX}${r.int(10)}`],
      [8, () => (this.escapes.length > 0 ? `${r.pick(this.escapes)}/${r.pick(['a', 'dir/b', 'new', 'dir', 'dir/new'])}` : 'a')],
      [4, () => `${this.symlinkName()}/${this.component()}`],
      [2, () => `${'d/'.repeat(r.range(50, 3000))}f`],
      [1, () => 'x'.repeat(r.range(200, 20_000))],
      [2, () => r.pick(['', '.', '/', './', '..', '//', './.'])],
      [3, () => `${r.pick(this.dirs.length > 0 ? this.dirs : ['a'])}/.wh..wh..opq`],
      [3, () => `${this.names.length > 0 ? r.pick(this.names) : 'a'}/.wh.${this.component()}`],
    ])();
  }

  /** A previous symlink's name, or a fresh word. */
  symlinkName(): string {
    return this.names.length > 0 ? this.rng.pick(this.names) : 'l';
  }

  linkTarget(): string {
    const r = this.rng;
    if (this.gentle) {
      return r.weighted<() => string>([
        [20, () => (this.names.length > 0 ? r.pick(this.names) : 'a')],
        [6, () => r.pick(['etc/hosts', 'a', 'x/keep', 'root/etc/passwd', 'sent/a', 'senta', 'up/etc', 'b/hosts', 'c/hosts', 'loop1'])],
        [6, () => '/'],
        [6, () => '../'.repeat(r.range(1, 20))],
        [8, () => (this.escapes.length > 0 ? r.pick(this.escapes) : '/etc')],
        [6, () => (this.escapes.length > 0 ? `${r.pick(this.escapes)}/${r.pick(['a', 'dir', 'dir/b'])}` : '/etc/passwd')],
        [4, () => `/${HOST_ESCAPE_PREFIX}${r.int(10)}`],
        [4, () => r.pick(['/etc/passwd', '/proc/self/root', '/dev/null', '/tmp'])],
        [6, () => this.name()],
      ])();
    }
    return r.weighted<() => string>([
      [20, () => (this.names.length > 0 ? r.pick(this.names) : 'a')],
      [8, () => '/'],
      [8, () => '../'.repeat(r.range(1, 20))],
      [8, () => (this.escapes.length > 0 ? r.pick(this.escapes) : '/etc')],
      [6, () => (this.escapes.length > 0 ? `${r.pick(this.escapes)}/${r.pick(['a', 'dir', 'dir/b'])}` : '/etc/passwd')],
      [4, () => `/${HOST_ESCAPE_PREFIX}${r.int(10)}`],
      [4, () => r.pick(['/etc/passwd', '/proc/self/root', '/dev/null', '/tmp'])],
      [6, () => this.name()],
      [3, () => '.'],
      [2, () => ''],
      [1, () => 'l'.repeat(r.range(100, 5000))],
    ])();
  }

  num(kind: 'mode' | 'id' | 'mtime' | 'dev'): number {
    const r = this.rng;
    switch (kind) {
      case 'mode':
        return r.weighted([
          [10, r.pick([0o644, 0o755, 0o600, 0o777, 0o1777, 0o4755, 0o2755, 0o7777, 0, 0o400, 0o000])],
          [3, r.int(0o100000)],
          [1, r.u32()],
        ]);
      case 'id':
        return r.weighted([
          [10, 0],
          [6, r.pick([1, 65534, 1000, 0o7777777])],
          [2, r.u32()],
          [1, 2 ** 32 + r.int(1000)],
        ]);
      case 'mtime':
        return r.weighted([
          [10, 946684800],
          [4, r.int(2 ** 33)],
          [2, 0],
          [1, 2 ** 40],
        ]);
      case 'dev':
        return r.weighted([
          [10, 0],
          [4, r.range(0, 300)],
          [1, r.u32()],
        ]);
    }
  }

  forms(): RawHeader['forms'] {
    const r = this.rng;
    if (this.gentle) return r.chance(0.8) ? undefined : { uid: 'base256', gid: 'base256', size: 'octal-space' };
    if (r.chance(0.8)) return undefined;
    const all: NumForm[] = ['octal', 'octal-space', 'base256', 'garbage', 'empty', 'overflow'];
    const out: NonNullable<RawHeader['forms']> = {};
    for (const k of ['mode', 'uid', 'gid', 'size', 'mtime', 'devmajor', 'devminor'] as const) if (r.chance(0.3)) out[k] = r.pick(all);
    return out;
  }

  checksum(): RawHeader['checksum'] {
    if (this.gentle) return this.rng.chance(0.9) ? 'right' : 'signed';
    return this.rng.weighted([
      [90, 'right'],
      [4, 'signed'],
      [4, 'wrong'],
      [2, 'garbage'],
    ] as const);
  }

  magic(): RawHeader['magic'] {
    if (this.gentle) return this.rng.chance(0.7) ? 'ustar' : 'gnu';
    return this.rng.weighted([
      [60, 'ustar'],
      [25, 'gnu'],
      [10, 'v7'],
      [5, 'garbage'],
    ] as const);
  }

  /** A header with data; the name goes in the 100 bytes (+ prefix for ustar when it fits), else via a PAX or GNU record first. */
  entry(typeflag: string, name: string, opts: { body?: Buffer; declared?: number; linkname?: string } = {}): void {
    const r = this.rng;
    const body = opts.body ?? Buffer.alloc(0);
    const declared = opts.declared ?? body.length;
    let nameBuf = Buffer.from(name, 'latin1').length === name.length && /[\x80-\xff]/.test(name) ? Buffer.from(name, 'latin1') : Buffer.from(name);
    let prefix: Buffer | undefined;
    const magic = this.magic();
    const linkBuf = Buffer.from(opts.linkname ?? '');
    if (nameBuf.length > 100) {
      const how = r.weighted([
        [4, 'pax'],
        [3, 'gnu'],
        [2, 'prefix'],
        [1, 'cut'],
      ] as const);
      if (how === 'pax') this.pax([['path', nameBuf]]);
      else if (how === 'gnu') this.gnuLong('L', nameBuf);
      else if (how === 'prefix' && magic === 'ustar') {
        const slash = nameBuf.lastIndexOf(0x2f, nameBuf.length - 2);
        if (slash > 0 && slash <= 155 && nameBuf.length - slash - 1 <= 100) {
          prefix = nameBuf.subarray(0, slash);
          nameBuf = nameBuf.subarray(slash + 1);
        }
      }
    }
    if (linkBuf.length > 100 && r.chance(0.7)) {
      if (r.chance(0.5)) this.pax([['linkpath', linkBuf]]);
      else this.gnuLong('K', linkBuf);
    }
    const h: RawHeader = {
      name: nameBuf,
      mode: this.num('mode'),
      uid: this.num('id'),
      gid: this.num('id'),
      size: declared,
      mtime: this.num('mtime'),
      typeflag,
      linkname: linkBuf,
      magic,
      checksum: this.checksum(),
      devmajor: this.num('dev'),
      devminor: this.num('dev'),
      forms: this.forms(),
      ...(prefix ? { prefix } : {}),
      ...(r.chance(0.1) ? { uname: 'root' } : {}),
    };
    this.parts.push(headerBlock(h, r));
    if (body.length > 0) this.parts.push(body);
    // Padding for what was written (which may disagree with what was declared).
    if (this.gentle || !r.chance(0.05)) this.parts.push(pad(body.length));
    this.names.push(name);
    if (typeflag === '5') this.dirs.push(name.replace(/\/+$/, ''));
  }

  pax(records: [string | Buffer, string | Buffer][], flag = 'x', raw?: Buffer): void {
    const data = raw ?? Buffer.concat(records.map(([k, v]) => paxRecord(k, v)));
    const h: RawHeader = {
      name: Buffer.from(`PaxHeaders.0/${this.rng.int(100)}`),
      mode: 0o644,
      uid: 0,
      gid: 0,
      size: data.length,
      mtime: 0,
      typeflag: flag,
      linkname: Buffer.alloc(0),
      magic: 'ustar',
      checksum: this.rng.chance(0.97) ? 'right' : 'wrong',
    };
    this.parts.push(headerBlock(h, this.rng), data, pad(data.length));
  }

  gnuLong(flag: 'L' | 'K', value: Buffer): void {
    const data = Buffer.concat([value, this.rng.chance(0.8) ? Buffer.from([0]) : Buffer.alloc(0)]);
    const declared = !this.gentle && this.rng.chance(0.05) ? this.rng.pick([0, 2 ** 21, 2 ** 33, data.length + 700]) : data.length;
    const h: RawHeader = {
      name: Buffer.from('././@LongLink'),
      mode: 0,
      uid: 0,
      gid: 0,
      size: declared,
      mtime: 0,
      typeflag: flag,
      linkname: Buffer.alloc(0),
      magic: 'gnu',
      checksum: 'right',
    };
    this.parts.push(headerBlock(h, this.rng), data, pad(data.length));
  }

  body(): { body: Buffer; declared: number } {
    const r = this.rng;
    const n = r.weighted([
      [10, 0],
      [20, r.range(1, 600)],
      [4, r.range(600, 5000)],
      [1, r.range(5000, 70_000)],
    ]);
    const body = r.chance(0.3) ? r.bytes(n) : Buffer.alloc(n, 0x61 + r.int(26));
    if (this.gentle) return { body, declared: n };
    const declared = r.weighted([
      [90, n],
      [3, Math.max(0, n - r.range(1, 600))],
      [3, n + r.range(1, 2000)],
      [2, 2 ** 33 + r.int(1000)],
      [1, 2 ** 36 - 1],
    ]);
    return { body, declared };
  }

  /** One random thing in the archive. */
  step(): void {
    const r = this.rng;
    const kind = this.gentle
      ? r.weighted([
          [22, 'file'],
          [12, 'dir'],
          [12, 'symlink'],
          [10, 'hardlink'],
          [3, 'fifo'],
          [3, 'device'],
          [10, 'whiteout'],
          [6, 'pax'],
          [4, 'gnulong'],
          [1, 'global'],
        ] as const)
      : r.weighted([
      [22, 'file'],
      [12, 'dir'],
      [10, 'symlink'],
      [8, 'hardlink'],
      [4, 'fifo'],
      [3, 'device'],
      [8, 'whiteout'],
      [6, 'pax'],
      [4, 'gnulong'],
      [3, 'unknown'],
      [2, 'sparse'],
      [2, 'global'],
      [2, 'zero-block'],
      [1, 'garbage-block'],
    ] as const);
    switch (kind) {
      case 'file': {
        const name = this.name();
        const { body, declared } = this.body();
        const flag = r.weighted([
          [8, '0'],
          [2, '\0'],
          [1, '7'],
        ]);
        this.note(`file ${JSON.stringify(name.slice(0, 60))} ${body.length}/${declared}`);
        this.entry(flag, name, { body, declared });
        break;
      }
      case 'dir': {
        const name = `${this.name()}${r.chance(0.5) ? '/' : ''}`;
        this.note(`dir ${JSON.stringify(name.slice(0, 60))}`);
        this.entry('5', name, r.chance(0.05) ? this.body() : {});
        break;
      }
      case 'symlink': {
        const name = this.name();
        const linkname = this.linkTarget();
        this.note(`symlink ${JSON.stringify(name.slice(0, 60))} -> ${JSON.stringify(linkname.slice(0, 60))}`);
        this.entry('2', name, { linkname });
        break;
      }
      case 'hardlink': {
        const name = this.name();
        const linkname = this.linkTarget();
        this.note(`hardlink ${JSON.stringify(name.slice(0, 60))} -> ${JSON.stringify(linkname.slice(0, 60))}`);
        this.entry('1', name, { linkname, ...(r.chance(0.1) ? this.body() : {}) });
        break;
      }
      case 'fifo':
        this.entry('6', this.name());
        this.note('fifo');
        break;
      case 'device': {
        const name = this.name();
        this.note(`device ${JSON.stringify(name.slice(0, 60))}`);
        this.entry(r.pick(['3', '4']), name);
        break;
      }
      case 'whiteout': {
        const dir = r.chance(0.6) && this.dirs.length > 0 ? `${r.pick(this.dirs)}/` : r.chance(0.3) ? `${this.name()}/` : '';
        const base = r.weighted([
          [6, `.wh.${this.component()}`],
          [4, '.wh..wh..opq'],
          [2, r.pick(['.wh.', '.wh..', '.wh...', '.wh..wh.', '.wh..wh..opq/x'])],
          [2, `.wh.${this.names.length > 0 ? (r.pick(this.names).split('/').pop() ?? 'a') : 'a'}`],
        ]);
        const name = `${dir}${base}`;
        const flag = r.weighted([
          [8, '0'],
          [1, '5'],
          [1, '2'],
        ]);
        this.note(`whiteout ${JSON.stringify(name.slice(0, 60))} (${flag})`);
        this.entry(flag, name, flag === '2' ? { linkname: this.linkTarget() } : r.chance(0.1) ? this.body() : {});
        break;
      }
      case 'pax': {
        const form0 = r.weighted([
          [10, 'valid'],
          [3, 'truncated'],
          [3, 'badlen'],
          [2, 'hugelen'],
          [3, 'badkey'],
          [2, 'badvalue'],
          [2, 'sparse'],
          [2, 'garbage'],
        ] as const);
        const form = this.gentle ? 'valid' : form0;
        const recs: [string | Buffer, string | Buffer][] = [];
        const nrec = r.range(1, 4);
        for (let i = 0; i < nrec; i++) {
          if (this.gentle) {
            recs.push(
              r.weighted<() => [string | Buffer, string | Buffer]>([
                [6, () => ['path', this.name()]],
                [4, () => ['linkpath', this.linkTarget()]],
                [2, () => ['uid', String(r.pick([0, 1000, 2 ** 31, 2 ** 32 - 1]))]],
                [2, () => ['gid', String(r.pick([0, 1000, 2 ** 31, 2 ** 32 - 1]))]],
                [2, () => ['mtime', r.pick(['1.5', '946684800.123456789', '0', '4102444800'])]],
                [4, () => [`SCHILY.xattr.${r.pick(['user.fuzz', 'trusted.overlay.opaque', 'security.capability', 'trusted.overlay.redirect', 'trusted.fuzz'])}`, r.pick([Buffer.from('y'), r.bytes(r.range(0, 64))])]],
                [2, () => [r.pick(['comment', 'hdrcharset', 'uname', 'LIBARCHIVE.creationtime']), 'x']],
              ])(),
            );
            continue;
          }
          recs.push(
            r.weighted<() => [string | Buffer, string | Buffer]>([
              [6, () => ['path', this.name()]],
              [4, () => ['linkpath', this.linkTarget()]],
              [3, () => ['size', String(r.pick([0, 1, 100, 513, 2 ** 33, 2 ** 53, 2 ** 64]))]],
              [2, () => ['uid', String(this.num('id'))]],
              [2, () => ['gid', String(this.num('id'))]],
              [2, () => ['mtime', r.pick(['1.5', '-1', '1e300', '946684800.123456789', 'NaN', ''])]],
              [1, () => ['atime', r.pick(['1.5', '-1', 'x'])]],
              [4, () => [`SCHILY.xattr.${r.pick(['user.fuzz', 'trusted.overlay.opaque', 'security.capability', 'user.', 'bogus.ns', 'trusted.overlay.redirect', 'system.posix_acl_access'])}`, r.bytes(r.range(0, 64))]],
              [2, () => [r.pick(['comment', 'hdrcharset', 'uname', 'LIBARCHIVE.creationtime', 'SCHILY.dev']), r.bytes(r.range(0, 20))]],
            ])(),
          );
        }
        if (form === 'badkey') recs.push([r.pick(['', '=', 'a\nb', Buffer.from([0xff, 0xfe])]), 'x']);
        if (form === 'badvalue') recs.push([r.pick(['size', 'uid', 'gid', 'mtime']), r.pick(['-5', 'abc', '', '0x10', '1e3', ' 7'])]);
        if (form === 'sparse') recs.push([r.pick(['GNU.sparse.major', 'GNU.sparse.map', 'GNU.sparse.size', 'GNU.sparse.name']), '1']);
        let raw: Buffer | undefined;
        if (form === 'truncated') {
          const full = Buffer.concat(recs.map(([k, v]) => paxRecord(k, v)));
          raw = full.subarray(0, r.int(full.length));
        } else if (form === 'badlen') {
          raw = Buffer.from(r.pick(['5 path=a\n', '0 path=x\n', '-3 path=x\n', 'abc path=x\n', '99 path=x\n', '12path=x\n', '8 pathx\n', '10 path=x']));
        } else if (form === 'hugelen') {
          raw = Buffer.from(`${r.pick(['99999999999999999999', '9007199254740993', '2147483648'])} path=x\n`);
        } else if (form === 'garbage') {
          raw = r.bytes(r.range(1, 300));
        }
        this.note(`pax ${form} ${recs.map(([k]) => String(k).slice(0, 24)).join(',')}`);
        this.pax(recs, 'x', raw);
        // Usually a PAX header is followed by its entry.
        if (r.chance(0.8)) this.step();
        break;
      }
      case 'gnulong': {
        const flag = r.pick(['L', 'K'] as const);
        const value = Buffer.from(r.chance(0.5) ? this.name() : this.linkTarget());
        this.note(`gnu ${flag} ${value.length} bytes`);
        this.gnuLong(flag, value);
        if (r.chance(0.85)) this.step();
        break;
      }
      case 'unknown': {
        const flag = r.pick(['8', '9', 'A', 'D', 'M', 'N', 'V', 'X', 'Z', 'z', '\x7f', '\x80', 'I', 'E']);
        this.note(`typeflag ${JSON.stringify(flag)}`);
        this.entry(flag, this.name(), this.body());
        break;
      }
      case 'sparse': {
        this.note('sparse S');
        this.entry('S', this.name(), this.body());
        break;
      }
      case 'global': {
        this.note('global pax');
        this.pax([['path', this.name()], ['comment', 'x']], 'g');
        break;
      }
      case 'zero-block':
        this.note('zero block');
        this.parts.push(Buffer.alloc(BLOCK));
        break;
      case 'garbage-block':
        this.note('garbage block');
        this.parts.push(r.bytes(r.pick([BLOCK, r.range(1, 1500)])));
        break;
    }
  }
}

/** The case of `seed`. */
export function generateCase(seed: number, opts: GenOptions = {}): FuzzCase {
  const rng = new Rng(seed);
  const gentle = opts.gentle ?? false;
  const b = new Builder(rng, opts.escapes ?? [], gentle);
  if (gentle) b.note('gentle');
  const n = rng.weighted([
    [3, rng.range(0, 3)],
    [6, rng.range(3, 12)],
    [2, rng.range(12, 40)],
  ]);
  for (let i = 0; i < n; i++) b.step();
  const ending = gentle
    ? rng.weighted([
        [80, 'eof2'],
        [8, 'eof1'],
        [6, 'none'],
        [6, 'trailing'],
      ] as const)
    : rng.weighted([
    [60, 'eof2'],
    [8, 'eof1'],
    [8, 'none'],
    [10, 'cut'],
    [6, 'trailing'],
    [4, 'eof-then-entries'],
    [4, 'odd'],
  ] as const);
  b.note(`end ${ending}`);
  let tar = Buffer.concat(b.parts);
  switch (ending) {
    case 'eof2':
      tar = Buffer.concat([tar, Buffer.alloc(2 * BLOCK)]);
      break;
    case 'eof1':
      tar = Buffer.concat([tar, Buffer.alloc(BLOCK)]);
      break;
    case 'none':
      break;
    case 'cut':
      tar = tar.subarray(0, rng.int(tar.length + 1));
      break;
    case 'trailing':
      tar = Buffer.concat([tar, Buffer.alloc(2 * BLOCK), rng.bytes(rng.range(1, 3000))]);
      break;
    case 'eof-then-entries': {
      const before = tar;
      b.parts.length = 0;
      b.step();
      tar = Buffer.concat([before, Buffer.alloc(2 * BLOCK), ...b.parts]);
      break;
    }
    case 'odd':
      tar = Buffer.concat([tar, rng.bytes(rng.range(1, 511))]);
      break;
  }

  // The wrapper.
  const wrap = rng.weighted([
    [45, 'none'],
    [35, 'gzip'],
    [20, 'zstd'],
  ] as const);
  let blob = wrap === 'gzip' ? gzipSync(tar) : wrap === 'zstd' ? Buffer.from(zstdCompress(tar)) : tar;
  let mediaType = wrap === 'gzip' ? rng.pick([MEDIA_GZIP, MEDIA_DOCKER]) : wrap === 'zstd' ? MEDIA_ZSTD : rng.pick([MEDIA_TAR, 'application/vnd.docker.image.rootfs.diff.tar']);
  let wrapperDamaged = false;
  if (wrap !== 'none' && !gentle && rng.chance(0.35)) {
    wrapperDamaged = true;
    const how = rng.weighted([
      [4, 'flip'],
      [4, 'truncate'],
      [2, 'append'],
      [1, 'header'],
      [1, 'concat'],
    ] as const);
    b.note(`${wrap} corrupted: ${how}`);
    blob = Buffer.from(blob);
    if (how === 'flip') {
      for (let i = rng.range(1, 4); i > 0; i--) blob[rng.int(blob.length)] ^= 1 << rng.int(8);
    } else if (how === 'truncate') {
      blob = blob.subarray(0, rng.int(blob.length));
    } else if (how === 'append') {
      blob = Buffer.concat([blob, rng.bytes(rng.range(1, 100))]);
    } else if (how === 'header') {
      blob = Buffer.concat([blob.subarray(0, 2), rng.bytes(8), blob.subarray(10)]);
    } else {
      blob = Buffer.concat([blob, wrap === 'gzip' ? gzipSync(rng.bytes(50)) : Buffer.from(zstdCompress(rng.bytes(50)))]);
    }
  }
  if (!gentle && rng.chance(0.05)) {
    // Mislabelled: compressed bytes under the plain type, plain bytes under a compressed type, or unknown.
    wrapperDamaged = true;
    mediaType = rng.pick([MEDIA_TAR, MEDIA_GZIP, MEDIA_ZSTD, 'application/vnd.oci.image.layer.v1.tar+bzip2', 'text/plain']);
    b.note(`labelled ${mediaType}`);
  } else {
    b.note(`${wrap} ${mediaType.split('.').pop()}`);
  }
  return { seed, tar, blob, mediaType, wrapperDamaged, summary: b.summary };
}
