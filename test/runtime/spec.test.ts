/**
 * The OCI spec `strata run` writes: ctr's defaults (namespaces, mounts, capabilities, masked and read-only
 * paths, rlimits, device cgroup, cgroups path), then the image config rules (Entrypoint + Cmd or args that
 * replace both, Env merged over the defaults, WorkingDir, User resolved against the rootfs's passwd/group),
 * terminal and hostname, and the Any it is stored as.
 */
import { describe, expect, it } from 'vitest';
import {
  buildSpec,
  DEFAULT_CAPABILITIES,
  execProcess,
  mergeEnv,
  resolveUser,
  specAny,
  SPEC_TYPE_URL,
} from '../../src/runtime/spec.js';
import { kindOf } from '../helpers/errors.js';

const PASSWD = [
  'root:x:0:0:root:/root:/bin/sh',
  'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
  '# a comment',
  'app:x:1000:1001:App:/home/app:/bin/sh',
  'nobody:x:65534:65534:nobody:/:/bin/false',
].join('\n');
const GROUP = ['root:x:0:', 'daemon:x:1:', 'wheel:x:10:root,app', 'app:x:1001:app', 'audio:x:29:app', 'nogroup:x:65534:'].join('\n');

const base = { id: 'c1', namespace: 'default' };
const sync = (fn: () => unknown) => kindOf(Promise.resolve().then(fn));

describe('buildSpec defaults (ctr run)', () => {
  const spec = buildSpec({ ...base, imageConfig: { Cmd: ['sh'] } });

  it('has containerd 1.6 populateDefaultUnixSpec values', () => {
    expect(spec.ociVersion).toBe('1.0.2-dev');
    expect(spec.root).toEqual({ path: 'rootfs' });
    expect(spec.hostname).toBeUndefined();
    expect(spec.annotations).toBeUndefined();
    expect(spec.process!.terminal).toBeUndefined();
    expect(spec.process!.cwd).toBe('/');
    expect(spec.process!.noNewPrivileges).toBe(true);
    expect(spec.process!.rlimits).toEqual([{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }]);
    expect(DEFAULT_CAPABILITIES).toHaveLength(14);
    expect(spec.process!.capabilities).toEqual({
      bounding: DEFAULT_CAPABILITIES,
      effective: DEFAULT_CAPABILITIES,
      permitted: DEFAULT_CAPABILITIES,
    });
    expect(DEFAULT_CAPABILITIES).toEqual(expect.arrayContaining(['CAP_CHOWN', 'CAP_NET_BIND_SERVICE', 'CAP_KILL', 'CAP_AUDIT_WRITE']));
    expect(DEFAULT_CAPABILITIES).not.toContain('CAP_SYS_ADMIN');
  });

  it('has the default namespaces, mounts and paths', () => {
    const linux = spec.linux as Record<string, any>;
    expect(linux.namespaces).toEqual([{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network' }]);
    expect(linux.cgroupsPath).toBe('/default/c1');
    expect(spec.mounts!.map((m) => [m.destination, m.type])).toEqual([
      ['/proc', 'proc'],
      ['/dev', 'tmpfs'],
      ['/dev/pts', 'devpts'],
      ['/dev/shm', 'tmpfs'],
      ['/dev/mqueue', 'mqueue'],
      ['/sys', 'sysfs'],
      ['/run', 'tmpfs'],
    ]);
    expect(spec.mounts!.find((m) => m.destination === '/sys')!.options).toContain('ro');
    expect(linux.maskedPaths).toEqual(expect.arrayContaining(['/proc/kcore', '/proc/keys', '/sys/firmware', '/proc/scsi']));
    expect(linux.readonlyPaths).toEqual(['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger']);
    // Deny all devices, then allow the usual character devices; ctr's default cpu shares.
    expect(linux.resources.devices[0]).toEqual({ allow: false, access: 'rwm' });
    expect(linux.resources.devices).toContainEqual({ allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' });
    expect(linux.resources.devices).toContainEqual({ allow: true, type: 'c', major: 136, access: 'rwm' });
    expect(linux.resources.cpu).toEqual({ shares: 1024 });
  });

  it('serialises in the runtime-spec field order, as the Any containerd clients store', () => {
    const any = specAny(spec);
    expect(any.typeUrl).toBe(SPEC_TYPE_URL);
    expect(any.typeUrl).toBe('types.containerd.io/opencontainers/runtime-spec/1/Spec');
    const parsed = JSON.parse(any.value.toString('utf8'));
    expect(parsed).toEqual(spec);
    expect(Object.keys(parsed)).toEqual(['ociVersion', 'process', 'root', 'mounts', 'linux']);
    expect(Object.keys(parsed.process)).toEqual(['user', 'args', 'env', 'cwd', 'capabilities', 'rlimits', 'noNewPrivileges']);
  });

  it('takes a cgroups path, annotations, a read-only root and a hostname', () => {
    const s = buildSpec({ ...base, namespace: 'ns1', imageConfig: { Cmd: ['sh'] }, hostname: 'box', annotations: { a: 'b' }, readonlyRootfs: true });
    expect((s.linux as Record<string, unknown>).cgroupsPath).toBe('/ns1/c1');
    expect(s.hostname).toBe('box');
    expect(s.annotations).toEqual({ a: 'b' });
    expect(s.root).toEqual({ path: 'rootfs', readonly: true });
    const noCgroup = buildSpec({ ...base, imageConfig: { Cmd: ['sh'] }, cgroupsPath: '' });
    expect((noCgroup.linux as Record<string, unknown>).cgroupsPath).toBeUndefined();
  });
});

describe('buildSpec from the image config', () => {
  it('runs Entrypoint + Cmd; args replace both, as ctr run', () => {
    const imageConfig = { Entrypoint: ['/entry', '-x'], Cmd: ['serve', '--port', '80'] };
    expect(buildSpec({ ...base, imageConfig }).process!.args).toEqual(['/entry', '-x', 'serve', '--port', '80']);
    expect(buildSpec({ ...base, imageConfig, args: ['echo', 'hi'] }).process!.args).toEqual(['echo', 'hi']);
    expect(buildSpec({ ...base, imageConfig: { Entrypoint: ['/only'] } }).process!.args).toEqual(['/only']);
    expect(buildSpec({ ...base, imageConfig: { Cmd: ['sh'], Entrypoint: null } }).process!.args).toEqual(['sh']);
    expect(buildSpec({ ...base, imageConfig: {}, args: ['true'] }).process!.args).toEqual(['true']);
  });

  it('refuses a spec with no command', async () => {
    expect(await sync(() => buildSpec({ ...base, imageConfig: {} }))).toBe('invalid argument');
    expect(() => buildSpec({ ...base, imageConfig: { Cmd: [] }, args: [] })).toThrow(/no command/);
  });

  it('accepts the whole config blob as well as its config object', () => {
    const blob = { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config: { Cmd: ['x'], WorkingDir: '/w' } };
    const s = buildSpec({ ...base, imageConfig: blob });
    expect(s.process!.args).toEqual(['x']);
    expect(s.process!.cwd).toBe('/w');
  });

  it('uses the image Env or the default PATH, with the caller env merged over it', () => {
    expect(buildSpec({ ...base, imageConfig: { Cmd: ['sh'] } }).process!.env).toEqual([
      'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    ]);
    const imageConfig = { Cmd: ['sh'], Env: ['PATH=/bin', 'A=1', 'B=2'] };
    expect(buildSpec({ ...base, imageConfig }).process!.env).toEqual(['PATH=/bin', 'A=1', 'B=2']);
    // Override in place, append new; a bare name does not unset the image's variable (ctr: WithEnv runs first,
    // on an empty list, where it removes nothing, then the image config merges the rest over its Env).
    expect(buildSpec({ ...base, imageConfig, env: ['B=3', 'C=4', 'A'] }).process!.env).toEqual(['PATH=/bin', 'A=1', 'B=3', 'C=4']);
    // A value with '=' in it is kept whole.
    expect(buildSpec({ ...base, imageConfig, env: ['Q=x=y'] }).process!.env).toEqual(['PATH=/bin', 'A=1', 'B=2', 'Q=x=y']);
  });

  it('adds TERM=xterm and terminal with a tty', () => {
    const s = buildSpec({ ...base, imageConfig: { Cmd: ['sh'], Env: ['PATH=/bin'] }, terminal: true });
    expect(s.process!.terminal).toBe(true);
    expect(s.process!.env).toEqual(['PATH=/bin', 'TERM=xterm']);
    expect(Object.keys(s.process!)[0]).toBe('terminal');
  });

  it('uses WorkingDir, else /; cwd overrides', () => {
    expect(buildSpec({ ...base, imageConfig: { Cmd: ['sh'], WorkingDir: '/app' } }).process!.cwd).toBe('/app');
    expect(buildSpec({ ...base, imageConfig: { Cmd: ['sh'], WorkingDir: '' } }).process!.cwd).toBe('/');
    expect(buildSpec({ ...base, imageConfig: { Cmd: ['sh'], WorkingDir: '/app' }, cwd: '/tmp' }).process!.cwd).toBe('/tmp');
  });

  it('resolves the image User against the rootfs files; the user option overrides it', () => {
    const files = { passwd: PASSWD, group: GROUP };
    const user = (u: string | undefined, extra: Record<string, unknown> = files) =>
      buildSpec({ ...base, imageConfig: { Cmd: ['sh'], ...(u === undefined ? {} : { User: u }) }, ...extra }).process!.user;
    // No user: root, with root's supplementary groups and gid 0 first.
    expect(user(undefined)).toEqual({ uid: 0, gid: 0, additionalGids: [0, 10] });
    expect(user(undefined, {})).toEqual({ uid: 0, gid: 0, additionalGids: [0] });
    expect(user('app')).toEqual({ uid: 1000, gid: 1001, additionalGids: [1001, 10, 29] });
    expect(user('1000')).toEqual({ uid: 1000, gid: 1001, additionalGids: [1001, 10, 29] });
    expect(user('4242')).toEqual({ uid: 4242, gid: 0, additionalGids: [0] }); // no passwd entry: gid 0
    expect(user('1000:29')).toEqual({ uid: 1000, gid: 29, additionalGids: [10, 29] }); // 29 is a supplementary group already
    expect(user('app:audio')).toEqual({ uid: 1000, gid: 29, additionalGids: [10, 29] });
    expect(user('5:6', {})).toEqual({ uid: 5, gid: 6, additionalGids: [6] });
    expect(user('daemon:wheel')).toEqual({ uid: 1, gid: 10, additionalGids: [10] });
    // The option wins over the image.
    expect(buildSpec({ ...base, imageConfig: { Cmd: ['sh'], User: 'app' }, user: 'nobody', ...files }).process!.user).toEqual({
      uid: 65534,
      gid: 65534,
      additionalGids: [65534],
    });
  });

  it('refuses users it cannot resolve', async () => {
    const files = { passwd: PASSWD, group: GROUP };
    const build = (User: string, extra: Record<string, unknown> = files) => () => buildSpec({ ...base, imageConfig: { Cmd: ['sh'], User }, ...extra });
    expect(build('ghost')).toThrow(/no users found for "ghost"/);
    expect(build('app:ghosts')).toThrow(/no groups found for "ghosts"/);
    expect(build('app', {})).toThrow(/\/etc\/passwd is not available/);
    expect(build('1:grp', { passwd: PASSWD })).toThrow(/\/etc\/group is not available/);
    expect(build('a:b:c')).toThrow('invalid USER value a:b:c');
    // Out of runc's range: a name, not a number.
    expect(build('2147483648')).toThrow(/no users found/);
    expect(await sync(build('ghost'))).toBe('invalid argument');
  });
});

describe('helpers', () => {
  it('mergeEnv is containerd replaceOrAppendEnvValues', () => {
    expect(mergeEnv(['A=1', 'B=2'], ['B=9', 'A', 'C=3', 'A=4'])).toEqual(['A=4', 'B=9', 'C=3']);
    expect(mergeEnv([], ['X'])).toEqual([]);
  });

  it('resolveUser with no files gives numeric users only', () => {
    expect(resolveUser('')).toEqual({ uid: 0, gid: 0, additionalGids: [0] });
    expect(resolveUser('7:8')).toEqual({ uid: 7, gid: 8, additionalGids: [8] });
    expect(() => resolveUser('root')).toThrow(/not available/);
  });

  it('execProcess keeps the container process but runs other args', () => {
    const s = buildSpec({ ...base, imageConfig: { Cmd: ['sh'], Env: ['PATH=/bin'] }, terminal: true });
    const p = execProcess(s.process!, ['ls', '-l'], { cwd: '/tmp', env: ['X=1'] });
    expect(p.args).toEqual(['ls', '-l']);
    expect(p.cwd).toBe('/tmp');
    expect(p.terminal).toBeUndefined();
    expect(p.env).toEqual(['PATH=/bin', 'TERM=xterm', 'X=1']);
    expect(p.capabilities).toEqual(s.process!.capabilities);
    expect(execProcess(s.process!, ['sh'], { terminal: true }).terminal).toBe(true);
    expect(() => execProcess(s.process!, [])).toThrow(/needs a command/);
  });
});

describe('buildSpec with uid/gid mappings (ctr run --uidmap/--gidmap)', () => {
  it('adds a user namespace and linux.uidMappings / gidMappings, and nothing without them', () => {
    const uid = [{ containerID: 0, hostID: 100000, size: 65536 }];
    const gid = [{ containerID: 0, hostID: 200000, size: 65536 }];
    const s = buildSpec({ ...base, imageConfig: { Cmd: ['sh'] }, uidMappings: uid, gidMappings: gid });
    const linux = s.linux as { namespaces: { type: string }[]; uidMappings?: unknown; gidMappings?: unknown };
    expect(linux.namespaces.map((n) => n.type)).toEqual(['pid', 'ipc', 'uts', 'mount', 'network', 'user']);
    expect(linux.uidMappings).toEqual(uid);
    expect(linux.gidMappings).toEqual(gid);
    const plain = buildSpec({ ...base, imageConfig: { Cmd: ['sh'] } }).linux as typeof linux;
    expect(plain.namespaces.map((n) => n.type)).not.toContain('user');
    expect(plain.uidMappings).toBeUndefined();
  });
});
