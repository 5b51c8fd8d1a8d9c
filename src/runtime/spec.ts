/**
 * The OCI runtime spec `strata run` gives a container, built the way `ctr run IMAGE ID [ARGS...]` builds it
 * (containerd 1.6: oci.populateDefaultUnixSpec + WithDefaultUnixDevices + WithEnv + WithImageConfig +
 * WithProcessArgs + WithProcessCwd + WithTTY, and ctr's default `--cpu-shares 1024`):
 *
 *  - defaults: namespaces pid, ipc, uts, mount, network; mounts /proc, /dev (tmpfs), /dev/pts, /dev/shm,
 *    /dev/mqueue, /sys (read-only), /run (tmpfs); containerd's 14 default capabilities (bounding, permitted,
 *    effective); RLIMIT_NOFILE 1024; no new privileges; masked and read-only /proc and /sys paths; the device
 *    cgroup denies everything but the usual character devices (null, random, full, tty, zero, urandom,
 *    console, pts, ptmx); cgroupsPath `/<namespace>/<id>`; root `rootfs`.
 *  - the image config: Env (else PATH=/usr/local/sbin:...:/bin) with the caller's `env` merged over it
 *    ("K=V" replaces K in place or is appended; a bare "K" is dropped and does not unset the image's K,
 *    as with ctr's --env); args = Entrypoint + Cmd; WorkingDir (else "/"); User.
 *  - `args`, when given, replace the whole command line, Entrypoint included, as `ctr run` does (not as
 *    `docker run`, which keeps the Entrypoint).
 *  - `terminal` sets process.terminal and appends TERM=xterm; `cwd` overrides the working directory;
 *    `hostname` sets the hostname (ctr sets none: the container keeps the host's name in its UTS namespace).
 *
 * Users, as containerd's WithUser: "uid", "uid:gid", "name", "name:group" (and mixes). A numeric uid takes
 * its gid from the rootfs's /etc/passwd when it has an entry (else gid 0); names must be found in
 * /etc/passwd or /etc/group. The builder is pure: the caller hands in the rootfs's /etc/passwd and /etc/group
 * contents (`passwd`, `group`); without them, names cannot be resolved (an invalid-argument error) and
 * numeric users get gid 0. Supplementary groups are those of /etc/group listing the user's name, and the
 * primary gid is always in additionalGids (containerd's ensureAdditionalGids).
 */
import { invalidArgument } from '../core/errdefs.js';
import type { IDMapping } from '../core/idmap.js';
import type { ImageConfig, ImageRuntimeConfig } from '../images/manifest.js';

/** The type URL containerd's client gives an OCI spec in a container record (JSON bytes). */
export const SPEC_TYPE_URL = 'types.containerd.io/opencontainers/runtime-spec/1/Spec';
/** The type URL of an OCI process (exec's spec). */
export const PROCESS_TYPE_URL = 'types.containerd.io/opencontainers/runtime-spec/1/Process';
/** runtime-spec version in containerd 1.6's vendored specs-go. */
export const OCI_VERSION = '1.0.2-dev';
export const DEFAULT_UNIX_ENV = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];

export const DEFAULT_CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

/** The parts of an OCI runtime spec this module writes (the object is plain JSON). */
export interface OciUser {
  uid: number;
  gid: number;
  additionalGids?: number[];
}

export interface OciProcess {
  terminal?: boolean;
  consoleSize?: { height: number; width: number };
  user: OciUser;
  args?: string[];
  env?: string[];
  cwd: string;
  capabilities?: { bounding?: string[]; effective?: string[]; inheritable?: string[]; permitted?: string[]; ambient?: string[] };
  rlimits?: { type: string; hard: number; soft: number }[];
  noNewPrivileges?: boolean;
  [key: string]: unknown;
}

export interface OciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

export interface OciSpec {
  ociVersion: string;
  process?: OciProcess;
  root?: { path: string; readonly?: boolean };
  hostname?: string;
  mounts?: OciMount[];
  annotations?: Record<string, string>;
  linux?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface SpecOptions {
  id: string;
  namespace: string;
  /** The image config (the whole config blob, or only its `config` object). */
  imageConfig?: ImageConfig | ImageRuntimeConfig;
  /** Replace the command line (Entrypoint included), as `ctr run IMAGE ID ARGS...`. */
  args?: string[];
  /** "K=V" set or override, applied over the image's Env (a bare "K" is ignored, as ctr's --env). */
  env?: string[];
  terminal?: boolean;
  cwd?: string;
  hostname?: string;
  /** Overrides the image's User. */
  user?: string;
  /** The rootfs's /etc/passwd and /etc/group contents, to resolve user and group names. */
  passwd?: string;
  group?: string;
  annotations?: Record<string, string>;
  /** Default `/<namespace>/<id>`; '' leaves it unset. */
  cgroupsPath?: string;
  readonlyRootfs?: boolean;
  /**
   * A user namespace with these mappings (containerd's oci.WithUserNamespace, `ctr run --uidmap/--gidmap`): the
   * spec gains a `user` namespace and linux.uidMappings / gidMappings. Both or neither.
   */
  uidMappings?: IDMapping[];
  gidMappings?: IDMapping[];
}

function defaultMounts(): OciMount[] {
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    {
      destination: '/dev/pts',
      type: 'devpts',
      source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
    },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/run', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
  ];
}

/** The device cgroup: deny all, then containerd's WithDefaultUnixDevices. */
function defaultDevices(): Record<string, unknown>[] {
  const c = (major: number, minor?: number) => ({ allow: true, type: 'c', major, ...(minor === undefined ? {} : { minor }), access: 'rwm' });
  return [
    { allow: false, access: 'rwm' },
    c(1, 3), // /dev/null
    c(1, 8), // /dev/random
    c(1, 7), // /dev/full
    c(5, 0), // /dev/tty
    c(1, 5), // /dev/zero
    c(1, 9), // /dev/urandom
    c(5, 1), // /dev/console
    c(136), // /dev/pts/*
    c(5, 2), // /dev/ptmx
  ];
}

/** containerd's replaceOrAppendEnvValues: overrides replace by key or append; a bare "K" removes K. */
export function mergeEnv(defaults: readonly string[], overrides: readonly string[]): string[] {
  const results = [...defaults];
  const index = new Map<string, number>();
  defaults.forEach((e, i) => index.set(e.split('=', 1)[0]!, i));
  const removed = new Set<number>();
  for (const v of overrides) {
    const eq = v.indexOf('=');
    if (eq < 0) {
      const i = index.get(v);
      if (i !== undefined) removed.add(i);
      continue;
    }
    const i = index.get(v.slice(0, eq));
    if (i !== undefined) {
      results[i] = v;
      removed.delete(i);
    } else {
      results.push(v);
    }
  }
  return results.filter((_, i) => !removed.has(i));
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
}
interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    const l = line.trim();
    if (l === '' || l.startsWith('#')) continue;
    const f = l.split(':');
    const uid = Number.parseInt(f[2] ?? '', 10);
    const gid = Number.parseInt(f[3] ?? '', 10);
    if (f[0] && Number.isInteger(uid) && Number.isInteger(gid)) out.push({ name: f[0], uid, gid });
  }
  return out;
}

function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split('\n')) {
    const l = line.trim();
    if (l === '' || l.startsWith('#')) continue;
    const f = l.split(':');
    const gid = Number.parseInt(f[2] ?? '', 10);
    if (f[0] && Number.isInteger(gid)) out.push({ name: f[0], gid, members: (f[3] ?? '').split(',').filter(Boolean) });
  }
  return out;
}

const MAX_ID = 2 ** 31 - 1;

/** A numeric id as Go's strconv.Atoi reads it, within runc's range; undefined for a name. */
function numericId(s: string): number | undefined {
  if (!/^[+-]?\d+$/.test(s)) return undefined;
  const v = Number(s);
  return v >= 0 && v <= MAX_ID ? v : undefined;
}

/**
 * Resolves a USER string against the rootfs's passwd/group contents (containerd's WithUser +
 * WithAdditionalGIDs). Exported for tests and for `strata task exec --user`.
 */
export function resolveUser(user: string, files: { passwd?: string; group?: string } = {}): OciUser {
  const users = files.passwd === undefined ? undefined : parsePasswd(files.passwd);
  const groups = files.group === undefined ? undefined : parseGroup(files.group);
  const needUsers = (what: string): PasswdEntry[] => {
    if (!users) throw invalidArgument(`cannot resolve ${what}: the rootfs's /etc/passwd is not available`);
    return users;
  };
  let uid: number;
  let gid: number;
  let username: string | undefined;
  const parts = user === '' ? ['0'] : user.split(':');
  if (parts.length === 1) {
    const n = numericId(parts[0]!);
    if (n !== undefined) {
      const e = users?.find((u) => u.uid === n);
      uid = n;
      gid = e ? e.gid : 0;
      username = e?.name;
    } else {
      const e = needUsers(`user ${JSON.stringify(parts[0])}`).find((u) => u.name === parts[0]);
      if (!e) throw invalidArgument(`no users found for ${JSON.stringify(parts[0])} in /etc/passwd`);
      ({ uid, gid } = e);
      username = e.name;
    }
  } else if (parts.length === 2) {
    const [us, gs] = parts as [string, string];
    const nu = numericId(us);
    const ng = numericId(gs);
    if (nu !== undefined) {
      uid = nu;
      username = users?.find((u) => u.uid === nu)?.name;
    } else {
      const e = needUsers(`user ${JSON.stringify(us)}`).find((u) => u.name === us);
      if (!e) throw invalidArgument(`no users found for ${JSON.stringify(us)} in /etc/passwd`);
      uid = e.uid;
      username = e.name;
    }
    if (ng !== undefined) {
      gid = ng;
    } else {
      if (!groups) throw invalidArgument(`cannot resolve group ${JSON.stringify(gs)}: the rootfs's /etc/group is not available`);
      const g = groups.find((x) => x.name === gs);
      if (!g) throw invalidArgument(`no groups found for ${JSON.stringify(gs)} in /etc/group`);
      gid = g.gid;
    }
  } else {
    throw invalidArgument(`invalid USER value ${user}`);
  }
  // Supplementary groups: those listing the user by name (not the user's own-named group).
  const additional: number[] = [];
  if (username !== undefined && groups) {
    for (const g of groups) if (g.name !== username && g.members.includes(username)) additional.push(g.gid);
  }
  if (!additional.includes(gid)) additional.unshift(gid);
  return { uid, gid, additionalGids: additional };
}

const runtimeConfigOf = (c: ImageConfig | ImageRuntimeConfig | undefined): ImageRuntimeConfig => {
  if (!c) return {};
  if ('rootfs' in c || 'architecture' in c) return ((c as ImageConfig).config ?? {}) as ImageRuntimeConfig;
  return c as ImageRuntimeConfig;
};

/** The spec for `strata run` (see the file comment for the rules). */
export function buildSpec(opts: SpecOptions): OciSpec {
  const config = runtimeConfigOf(opts.imageConfig);
  const imageEnv = config.Env && config.Env.length > 0 ? config.Env : DEFAULT_UNIX_ENV;
  // ctr: WithEnv(--env) first, then WithImageConfig merges that over the image's Env.
  const env = mergeEnv(imageEnv, mergeEnv([], opts.env ?? []));
  if (opts.terminal) env.push('TERM=xterm');
  const args = opts.args && opts.args.length > 0 ? [...opts.args] : [...(config.Entrypoint ?? []), ...(config.Cmd ?? [])];
  if (args.length === 0) throw invalidArgument('no command: the image has neither Entrypoint nor Cmd and no arguments were given');
  const cwd = opts.cwd || config.WorkingDir || '/';
  const user = resolveUser(opts.user ?? config.User ?? '', { passwd: opts.passwd, group: opts.group });

  const process: OciProcess = {
    ...(opts.terminal ? { terminal: true } : {}),
    user,
    args,
    env,
    cwd,
    capabilities: { bounding: [...DEFAULT_CAPABILITIES], effective: [...DEFAULT_CAPABILITIES], permitted: [...DEFAULT_CAPABILITIES] },
    rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
    noNewPrivileges: true,
  };
  const cgroupsPath = opts.cgroupsPath ?? `/${opts.namespace}/${opts.id}`;
  const linux: Record<string, unknown> = {
    resources: { devices: defaultDevices(), cpu: { shares: 1024 } },
    ...(cgroupsPath ? { cgroupsPath } : {}),
    namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network' }],
    ...(opts.uidMappings?.length && opts.gidMappings?.length
      ? {
          uidMappings: opts.uidMappings.map((m) => ({ containerID: m.containerID, hostID: m.hostID, size: m.size })),
          gidMappings: opts.gidMappings.map((m) => ({ containerID: m.containerID, hostID: m.hostID, size: m.size })),
        }
      : {}),
    maskedPaths: [
      '/proc/acpi',
      '/proc/asound',
      '/proc/kcore',
      '/proc/keys',
      '/proc/latency_stats',
      '/proc/timer_list',
      '/proc/timer_stats',
      '/proc/sched_debug',
      '/sys/firmware',
      '/proc/scsi',
    ],
    readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
  };
  if (opts.uidMappings?.length && opts.gidMappings?.length) (linux.namespaces as { type: string }[]).push({ type: 'user' });
  const spec: OciSpec = {
    ociVersion: OCI_VERSION,
    process,
    root: { path: 'rootfs', ...(opts.readonlyRootfs ? { readonly: true } : {}) },
    ...(opts.hostname ? { hostname: opts.hostname } : {}),
    mounts: defaultMounts(),
    ...(opts.annotations && Object.keys(opts.annotations).length > 0 ? { annotations: { ...opts.annotations } } : {}),
    linux,
  };
  return spec;
}

/** The spec as a container record stores it (protobuf Any: type URL + JSON bytes, as containerd's client). */
export function specAny(spec: OciSpec): { typeUrl: string; value: Buffer } {
  return { typeUrl: SPEC_TYPE_URL, value: Buffer.from(JSON.stringify(spec)) };
}

/** An exec process (for `strata task exec`): the container's process with other args (and terminal). */
export function execProcess(base: OciProcess, args: string[], opts: { terminal?: boolean; cwd?: string; env?: string[] } = {}): OciProcess {
  if (args.length === 0) throw invalidArgument('exec needs a command');
  const p: OciProcess = { ...base, args: [...args] };
  p.env = mergeEnv(base.env ?? [], opts.env ?? []);
  if (opts.cwd) p.cwd = opts.cwd;
  if (opts.terminal) p.terminal = true;
  else delete p.terminal;
  return p;
}
