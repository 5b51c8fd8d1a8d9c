/**
 * Platforms as containerd 1.6's `platforms` package sees them: parsing specifiers ("linux/arm64/v8",
 * "linux", "amd64"), normalisation (aarch64 → arm64, x86_64 → amd64, armhf → arm/v7, ...), formatting, the
 * host's default, and the `platforms.Only` matcher/comparer used to pick manifests out of an index.
 *
 * Matching compares os, architecture and variant after normalising both sides (os.version and os.features
 * are ignored, as in containerd). `Only(p)` also accepts the platforms `p` can run:
 *   - amd64/vN accepts amd64/vN-1 ... amd64 (v1) and then 386;
 *   - arm/vN accepts arm/vN-1 ... arm/v5;
 *   - arm64 (v8) accepts arm/v8, arm/v7, arm/v6, arm/v5;
 * and prefers them in that order ({@link platformOrder}).
 */
import { endianness } from 'node:os';
import { invalidArgument } from '../core/errdefs.js';
import type { Platform } from '../core/descriptor.js';

const KNOWN_OS = new Set([
  'aix', 'android', 'darwin', 'dragonfly', 'freebsd', 'hurd', 'illumos', 'ios', 'js', 'linux', 'nacl', 'netbsd',
  'openbsd', 'plan9', 'solaris', 'windows', 'zos',
]);

const KNOWN_ARCH = new Set([
  '386', 'amd64', 'amd64p32', 'arm', 'armbe', 'arm64', 'arm64be', 'ppc64', 'ppc64le', 'loong64', 'mips', 'mipsle',
  'mips64', 'mips64le', 'mips64p32', 'mips64p32le', 'ppc', 'riscv', 'riscv64', 's390', 's390x', 'sparc', 'sparc64',
  'wasm',
]);

/** The host OS in GOOS terms. */
function hostOS(): string {
  switch (process.platform) {
    case 'win32':
      return 'windows';
    case 'sunos':
      return 'solaris';
    default:
      return process.platform; // linux, darwin, freebsd, openbsd, aix, android, ...
  }
}

/** The host architecture in GOARCH terms, with the variant containerd's DefaultSpec reports. */
function hostArch(): { architecture: string; variant?: string } {
  const le = endianness() === 'LE';
  switch (process.arch) {
    case 'x64':
      return { architecture: 'amd64' };
    case 'ia32':
      return { architecture: '386' };
    case 'arm64':
      return { architecture: 'arm64', variant: 'v8' };
    case 'arm': {
      const vars = (process.config as { variables?: Record<string, unknown> }).variables ?? {};
      const v = String(vars['arm_version'] ?? '7');
      return { architecture: 'arm', variant: /^[5-8]$/.test(v) ? `v${v}` : 'v7' };
    }
    case 'ppc64':
      return { architecture: le ? 'ppc64le' : 'ppc64' };
    case 'mipsel':
      return { architecture: 'mipsle' };
    case 'mips64el' as NodeJS.Architecture:
      return { architecture: 'mips64le' };
    default:
      return { architecture: process.arch }; // s390x, riscv64, loong64, mips, ppc, s390 ...
  }
}

function withVariant(os: string, architecture: string, variant?: string): Platform {
  const p: Platform = { os, architecture };
  if (variant) p.variant = variant;
  return p;
}

/** The host platform, as containerd's platforms.DefaultSpec(): e.g. linux/amd64, linux/arm64/v8. */
export function defaultPlatform(): Platform {
  const { architecture, variant } = hostArch();
  return withVariant(hostOS(), architecture, variant);
}

function normalizeOS(os: string | undefined): string {
  if (!os) return hostOS();
  const l = os.toLowerCase();
  return l === 'macos' ? 'darwin' : l;
}

function normalizeArch(arch: string | undefined, variant: string | undefined): [string, string] {
  let a = (arch ?? '').toLowerCase();
  let v = (variant ?? '').toLowerCase();
  switch (a) {
    case 'i386':
      a = '386';
      v = '';
      break;
    case 'x86_64':
    case 'x86-64':
    case 'amd64':
      a = 'amd64';
      if (v === 'v1') v = '';
      break;
    case 'aarch64':
    case 'arm64':
      a = 'arm64';
      if (v === '8' || v === 'v8') v = '';
      break;
    case 'armhf':
      a = 'arm';
      v = 'v7';
      break;
    case 'armel':
      a = 'arm';
      v = 'v6';
      break;
    case 'arm':
      if (v === '' || v === '7') v = 'v7';
      else if (v === '5' || v === '6' || v === '8') v = `v${v}`;
      break;
  }
  return [a, v];
}

/**
 * containerd's platforms.Normalize: lower case, os aliases (macos → darwin, empty → host os), architecture
 * aliases; arm64's "v8" variant and amd64's "v1" are dropped, arm gets "v7" when it has none.
 * os.version and os.features are kept.
 */
export function normalizePlatform(p: Platform): Platform {
  const [architecture, variant] = normalizeArch(p.architecture, p.variant);
  const out = withVariant(normalizeOS(p.os), architecture, variant);
  if (p['os.version']) out['os.version'] = p['os.version'];
  if (p['os.features']) out['os.features'] = [...p['os.features']];
  return out;
}

const COMPONENT = /^[A-Za-z0-9_-]+$/;

/**
 * Parses a platform specifier as containerd's platforms.Parse: "os", "arch", "os/arch" or "os/arch/variant".
 * A single component is an OS if known (the architecture is then the host's), else an architecture (the OS
 * is then the host's). "os/arm" drops the default v7 variant; "os/arm64/v8" keeps v8 (containerd's
 * asymmetry: "linux/arm64" and "linux/arm64/v8" parse differently but match the same platforms).
 * @throws invalid argument for wildcards, bad components or unknown single components.
 */
export function parsePlatform(specifier: string): Platform {
  if (specifier.includes('*')) throw invalidArgument(`"${specifier}": wildcards not yet supported`);
  const parts = specifier.split('/');
  for (const part of parts) {
    if (!COMPONENT.test(part)) {
      throw invalidArgument(
        `"${part}" is an invalid component of "${specifier}": platform specifier component must match "${COMPONENT.source}"`,
      );
    }
  }
  switch (parts.length) {
    case 1: {
      const os = normalizeOS(parts[0]);
      if (KNOWN_OS.has(os)) {
        const host = hostArch();
        const variant = host.architecture === 'arm' && host.variant !== 'v7' ? host.variant : undefined;
        return withVariant(os, host.architecture, variant);
      }
      let [architecture, variant] = normalizeArch(parts[0], '');
      if (architecture === 'arm' && variant === 'v7') variant = '';
      if (KNOWN_ARCH.has(architecture)) return withVariant(hostOS(), architecture, variant);
      throw invalidArgument(`"${specifier}": unknown operating system or architecture`);
    }
    case 2: {
      let [architecture, variant] = normalizeArch(parts[1], '');
      if (architecture === 'arm' && variant === 'v7') variant = '';
      return withVariant(normalizeOS(parts[0]), architecture, variant);
    }
    case 3: {
      let [architecture, variant] = normalizeArch(parts[1], parts[2]);
      if (architecture === 'arm64' && variant === '') variant = 'v8';
      return withVariant(normalizeOS(parts[0]), architecture, variant);
    }
  }
  throw invalidArgument(`"${specifier}": cannot parse platform specifier`);
}

/** "os/arch[/variant]" as containerd's platforms.Format; "unknown" without an os. */
export function formatPlatform(p: Platform): string {
  if (!p.os) return 'unknown';
  return [p.os, p.architecture, p.variant].filter((s) => s).join('/');
}

/** Exact match after normalising both sides (containerd's platforms.NewMatcher). */
function exactMatcher(p: Platform): (candidate: Platform) => boolean {
  const m = normalizePlatform(p);
  return (c) => {
    const n = normalizePlatform(c);
    return m.os === n.os && m.architecture === n.architecture && (m.variant ?? '') === (n.variant ?? '');
  };
}

/** The platforms `p` can run, best first (containerd's platformVector). `p` must be normalised. */
function platformVector(p: Platform): Platform[] {
  const vector: Platform[] = [p];
  const base = (variant?: string, architecture = p.architecture): Platform => {
    const q = withVariant(p.os, architecture, variant);
    if (p['os.version']) q['os.version'] = p['os.version'];
    if (p['os.features']) q['os.features'] = p['os.features'];
    return q;
  };
  const version = (v: string | undefined): number => (v && /^v?\d+$/.test(v) ? Number(v.replace(/^v/, '')) : NaN);
  switch (p.architecture) {
    case 'amd64': {
      const n = version(p.variant);
      if (n > 1) for (let i = n - 1; i >= 1; i--) vector.push(base(`v${i}`));
      vector.push(base(undefined, '386'));
      break;
    }
    case 'arm': {
      const n = version(p.variant);
      if (n > 5) for (let i = n - 1; i >= 5; i--) vector.push(base(`v${i}`));
      break;
    }
    case 'arm64':
      vector.push(...platformVector(base(p.variant || 'v8', 'arm')));
      break;
  }
  return vector;
}

/** A matcher with an order of preference (containerd's MatchComparer). */
export interface PlatformMatcher {
  (candidate: Platform): boolean;
  /** Sort comparator: negative when `a` is preferred to `b` (unmatched platforms sort last). */
  compare(a: Platform, b: Platform): number;
  /** The platforms accepted, best first (normalised). */
  readonly accepted: readonly Platform[];
}

function ordered(platforms: Platform[]): PlatformMatcher {
  const matchers = platforms.map(exactMatcher);
  const match = ((c: Platform) => matchers.some((m) => m(c))) as PlatformMatcher;
  const rank = (c: Platform): number => {
    const i = matchers.findIndex((m) => m(c));
    return i < 0 ? matchers.length : i;
  };
  match.compare = (a, b) => rank(a) - rank(b);
  Object.defineProperty(match, 'accepted', { value: platforms.map(normalizePlatform) });
  return match;
}

/**
 * containerd's platforms.Only(p): matches `p` and the platforms it can run (see the file header), preferring
 * them in that order through `.compare`.
 */
export function platformMatcher(p: Platform): PlatformMatcher {
  return ordered(platformVector(normalizePlatform(p)));
}

/** containerd's platforms.OnlyStrict(p): `p` alone (normalised). */
export function platformMatcherStrict(p: Platform): PlatformMatcher {
  return ordered([normalizePlatform(p)]);
}

/**
 * containerd's platforms.Ordered(...ps): each platform exactly (normalised), preferred in the given order
 * (what `ctr image export --platform a --platform b` uses).
 */
export function platformMatcherOrdered(ps: readonly Platform[]): PlatformMatcher {
  return ordered(ps.map(normalizePlatform));
}

/** containerd's platforms.All: matches everything, no preference. */
export const allPlatforms: PlatformMatcher = Object.assign((_: Platform) => true, {
  compare: () => 0,
  accepted: [] as Platform[],
});

/**
 * The comparator for choosing among an index's manifests for `p` (containerd's Only(p).Less as a sort
 * function): negative when `a` is the better match. Use with a stable sort; entries without a match sort last.
 */
export function platformOrder(p: Platform): (a: Platform, b: Platform) => number {
  return platformMatcher(p).compare;
}
