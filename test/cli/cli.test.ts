/**
 * The strata CLI against a real stratad: every command group run as a subprocess, with its output checked the
 * way a user reads it (tables, sizes, labels, JSON) and its failures checked by message and exit status.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WriteAction, type WriteContentRequest, type WriteContentResponse } from '../../src/api/gen/containerd/services/content/v1/content.js';
import type { Plugin } from '../../src/api/gen/containerd/services/introspection/v1/introspection.js';
import { parseDuration } from '../../src/cli/command.js';
import { humanDuration, humanSize, rfc3339, tabwrite } from '../../src/cli/output.js';
import { pluginStatus } from '../../src/cli/plugins.js';
import { STRATA_VERSION } from '../../src/version.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { ctr, run, tableRows, type RunResult } from '../helpers/ctr.js';
import { STRATA } from '../helpers/paths.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const sha256 = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const NS_HEADER = ['NAME', 'LABELS'];
const CONTENT_HEADER = ['DIGEST', 'SIZE', 'AGE', 'LABELS'];
const ACTIVE_HEADER = ['REF', 'SIZE', 'AGE'];
const ZERO_DIGEST = `sha256:${'0'.repeat(64)}`;

let d: StartedDaemon;

const strata = (args: string[], opts: { input?: string | Buffer; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> =>
  run(process.execPath, [STRATA, '--address', d.address, ...args], opts);

/** Like strata() but keeps stdout as bytes (for blobs). */
function strataRaw(args: string[]): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [STRATA, '--address', d.address, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    p.stdout.on('data', (b: Buffer) => out.push(b));
    p.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr }));
  });
}

/** Runs strata and expects success; returns stdout. */
async function ok(args: string[], opts: { input?: string | Buffer; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const r = await strata(args, opts);
  expect(r.stderr, `strata ${args.join(' ')}`).toBe('');
  expect(r.code, `strata ${args.join(' ')}`).toBe(0);
  return r.stdout;
}

/**
 * Starts an uncommitted ingest of `data` under `ref` with the raw Write stream and leaves it there, as a client
 * that dies mid-transfer would. The call is cancelled rather than half-closed: stratad never answers a Write
 * stream that is half-closed without COMMIT (see the CLI report), so a half-close would hang here.
 */
async function partialIngest(namespace: string, ref: string, data: Buffer, total: number, expected: string): Promise<void> {
  const c = d.client(namespace);
  try {
    const call = c.content.write(c.metadata());
    call.on('error', () => undefined); // the CANCELLED status below
    const responses = call[Symbol.asyncIterator]() as AsyncIterator<WriteContentResponse>;
    const base: WriteContentRequest = { action: WriteAction.STAT, ref, total, expected, offset: 0, data: Buffer.alloc(0), labels: {} };
    call.write(base);
    expect((await responses.next()).value.offset).toBe(0);
    call.write({ ...base, action: WriteAction.WRITE, data });
    expect((await responses.next()).value.offset).toBe(data.length);
    call.cancel();
    // Wait until the daemon has let go of the ref (a resumed write would otherwise find it busy).
    const deadline = Date.now() + 10_000;
    for (;;) {
      const { statuses } = await c.call(c.content, c.content.listStatuses, { filters: [] });
      if (statuses.some((s) => s.ref === ref && s.offset === data.length)) break;
      if (Date.now() > deadline) throw new Error(`ingest ${ref} not visible`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    c.close();
  }
}

beforeAll(async () => {
  d = await startDaemon({ logLevel: 'info' });
});

afterAll(async () => {
  await stopAll();
  await d?.dir.cleanup();
});

describe('strata namespaces', () => {
  it('creates, lists, labels and removes namespaces', async () => {
    expect(await ok(['namespaces', 'create', 'cli-ns', 'team=storage', 'flag'])).toBe('');
    let out = await ok(['ns', 'ls']);
    expect(tableRows(out, NS_HEADER)).toContainEqual(['cli-ns', 'flag=true,team=storage']);

    expect((await ok(['ns', 'ls', '-q'])).split('\n')).toContain('cli-ns');

    // KEY=VALUE sets, KEY= removes, like ctr.
    expect(await ok(['ns', 'label', 'cli-ns', 'team=', 'tier=gold'])).toBe('');
    out = await ok(['ns', 'ls']);
    expect(tableRows(out, NS_HEADER)).toContainEqual(['cli-ns', 'flag=true,tier=gold']);

    const json = JSON.parse(await ok(['ns', 'ls', '--json'])) as { name: string; labels: Record<string, string> }[];
    expect(json).toContainEqual({ name: 'cli-ns', labels: { flag: 'true', tier: 'gold' } });

    const dup = await strata(['ns', 'create', 'cli-ns']);
    expect(dup.code).toBe(1);
    expect(dup.stderr).toBe('strata: namespace cli-ns: already exists\n');

    expect(await ok(['ns', 'rm', 'cli-ns'])).toBe('cli-ns\n');
    expect((await ok(['ns', 'ls', '-q'])).split('\n')).not.toContain('cli-ns');
  });

  it('refuses to remove a namespace that still holds blobs', async () => {
    await ok(['-n', 'cli-full', 'content', 'ingest', 'keep'], { input: 'kept\n' });
    const r = await strata(['ns', 'rm', 'cli-full']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^strata: unable to delete cli-full: .*must be empty/);
    expect(r.stdout).toBe('');
    expect((await ok(['ns', 'ls', '-q'])).split('\n')).toContain('cli-full');
  });

  it('needs a name', async () => {
    const r = await strata(['ns', 'create']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('strata: please specify a namespace\n');
  });
});

describe('strata content', () => {
  const ns = ['--namespace', 'cli-content'];
  const blob = randomBytes(3 * 1024 * 1024 + 17); // several Read/Write chunks, not text
  const dgst = sha256(blob);

  it('ingests stdin without an expected digest, silently', async () => {
    expect(await ok([...ns, 'content', 'ingest', 'plain-ref'], { input: 'hello strata\n' })).toBe('');
    expect((await ok([...ns, 'content', 'ls', '-q'])).split('\n')).toContain(sha256('hello strata\n'));
  });

  it('ingests with --expected-digest and --expected-size, lists it with its size, and gets identical bytes', async () => {
    expect(
      await ok([...ns, 'content', 'ingest', '--expected-digest', dgst, '--expected-size', String(blob.length), 'big-ref'], {
        input: blob,
      }),
    ).toBe('');

    const line = tableRows(await ok([...ns, 'content', 'ls']), CONTENT_HEADER).find((r) => r[0] === dgst);
    expect(line).toBeDefined();
    expect(line![1]).toBe('3.146MB');
    expect(line![2]).toMatch(/^(Less than a second|\d+ seconds?)$/);
    expect(line![3]).toBe('-');

    const got = await strataRaw([...ns, 'content', 'get', dgst]);
    expect(got.stderr).toBe('');
    expect(got.code).toBe(0);
    expect(got.stdout.length).toBe(blob.length);
    expect(got.stdout.equals(blob)).toBe(true);
  });

  it('accepts global flags after the group and from the environment', async () => {
    const viaFlagAfter = await ok(['content', 'ls', '-q', '-n', 'cli-content']);
    expect(viaFlagAfter.split('\n')).toContain(dgst);
    const env = { ...process.env, STRATA_ADDRESS: d.address, STRATA_NAMESPACE: 'cli-content' };
    const r = await run(process.execPath, [STRATA, 'content', 'ls', '-q'], { env });
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')).toContain(dgst);
    const r2 = await run(process.execPath, [STRATA, 'content', 'ls', '-q'], {
      env: { ...process.env, STRATA_ADDRESS: d.address, STRATA_NAMESPACE: '', CONTAINERD_NAMESPACE: 'cli-content' },
    });
    expect(r2.stdout.split('\n')).toContain(dgst);
  });

  it('fails an ingest whose expected digest does not match and keeps no blob', async () => {
    const data = 'not what you expected\n';
    const r = await strata([...ns, 'content', 'ingest', '--expected-digest', ZERO_DIGEST, 'wrong-ref'], { input: data });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^strata: .*unexpected commit digest .*expected sha256:0{64}.*: failed precondition\n$/);
    expect((await ok([...ns, 'content', 'ls', '-q'])).split('\n')).not.toContain(sha256(data));
    const get = await strata([...ns, 'content', 'get', sha256(data)]);
    expect(get.code).toBe(1);
    expect(get.stderr).toBe(`strata: content ${sha256(data)}: not found\n`);
    // An invalid digest is refused before anything is sent.
    const bad = await strata([...ns, 'content', 'ingest', '--expected-digest', 'sha256:nope', 'bad-ref'], { input: data });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe('strata: invalid digest "sha256:nope": invalid argument\n');
  });

  it('labels a blob and shows the labels in ls', async () => {
    expect(await ok([...ns, 'content', 'label', dgst, 'owner=cli', 'tmp=1'])).toBe('owner=cli,tmp=1\n');
    expect(await ok([...ns, 'content', 'label', dgst, 'tmp='])).toBe('owner=cli\n');
    expect(await ok([...ns, 'content', 'label', dgst])).toBe('owner=cli\n');
    const line = tableRows(await ok([...ns, 'content', 'ls']), CONTENT_HEADER).find((r) => r[0] === dgst);
    expect(line![3]).toBe('owner=cli');

    const json = JSON.parse(await ok([...ns, 'content', 'ls', '--json'])) as Record<string, unknown>[];
    const entry = json.find((e) => e.digest === dgst)!;
    expect(entry).toMatchObject({ digest: dgst, size: blob.length, labels: { owner: 'cli' } });
    // RFC 3339 with the nanoseconds the daemon keeps (Go's RFC3339Nano, as ctr's JSON shows times).
    expect(entry.createdAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{4,9}Z$/);
    expect(Math.abs(Date.parse(entry.createdAt as string) - Date.now())).toBeLessThan(600_000);

    // Filters are passed through.
    const filtered = await ok([...ns, 'content', 'ls', '-q', 'labels.owner==cli']);
    expect(filtered).toBe(`${dgst}\n`);
  });

  it('shows a partial ingest in active and resumes it', async () => {
    const data = randomBytes(300_000);
    await partialIngest('cli-content', 'resume-ref', data.subarray(0, 120_000), data.length, sha256(data));

    const out = await ok([...ns, 'content', 'active']);
    const line = tableRows(out, ACTIVE_HEADER).find((r) => r[0] === 'resume-ref');
    expect(line?.slice(0, 2)).toEqual(['resume-ref', '120kB']);

    const json = JSON.parse(await ok([...ns, 'content', 'active', '--json'])) as Record<string, unknown>[];
    expect(json.find((s) => s.ref === 'resume-ref')).toMatchObject({ offset: 120_000, total: data.length });

    // The same ref with the whole input: the first 120 kB are skipped, the rest written, then committed.
    expect(await ok([...ns, 'content', 'ingest', '--expected-digest', sha256(data), 'resume-ref'], { input: data })).toBe('');
    expect(tableRows(await ok([...ns, 'content', 'active']), ACTIVE_HEADER).find((r) => r[0] === 'resume-ref')).toBeUndefined();
    const got = await strataRaw([...ns, 'content', 'get', sha256(data)]);
    expect(got.stdout.equals(data)).toBe(true);
  });

  // Daemon bug (outside src/cli): a Write stream that is half-closed without COMMIT never gets a status, so
  // partialIngest() cancels instead. Remove the workaround when stratad ends such calls with OK, as containerd does.

  it('removes blobs, skipping ones already gone, and reports bad digests', async () => {
    const gone = sha256('hello strata\n');
    expect(await ok([...ns, 'content', 'rm', gone])).toBe(`${gone}\n`);
    expect(await ok([...ns, 'content', 'rm', gone])).toBe('');
    const r = await strata([...ns, 'content', 'rm', 'nope', dgst]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe(`${dgst}\n`);
    expect(r.stderr).toBe('strata: could not delete nope: invalid digest "nope": invalid argument\n');
    expect((await ok([...ns, 'content', 'ls', '-q'])).split('\n')).not.toContain(dgst);
    const get = await strata([...ns, 'content', 'get', dgst]);
    expect(get.code).toBe(1);
    expect(get.stderr).toBe(`strata: content ${dgst}: not found\n`);
  });
});

describe('strata leases', () => {
  const EXPIRE = 'containerd.io/gc.expire';
  type JsonLease = { id: string; createdAt: string; labels: Record<string, string> };
  const list = async () => JSON.parse(await ok(['-n', 'cli-leases', 'leases', 'ls', '--json'])) as JsonLease[];

  it('creates leases with an id, labels and an expiry, lists and removes them', async () => {
    const before = Date.now();
    expect(await ok(['-n', 'cli-leases', 'leases', 'create', '--id', 'cli-l1', '--expires', '2h', 'purpose=test'])).toBe('cli-l1\n');
    expect(await ok(['-n', 'cli-leases', 'leases', 'create', '--id', 'cli-l2', '--expires', '0'])).toBe('cli-l2\n');
    const generated = (await ok(['-n', 'cli-leases', 'leases', 'create'])).trim();
    expect(generated).toMatch(/^\S+$/);

    const leases = await list();
    const l1 = leases.find((l) => l.id === 'cli-l1')!;
    expect(l1.labels.purpose).toBe('test');
    const expireAt = Date.parse(l1.labels[EXPIRE]!);
    expect(l1.labels[EXPIRE]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$/);
    expect(expireAt).toBeGreaterThanOrEqual(before + 2 * 3_600_000 - 1000);
    expect(expireAt).toBeLessThanOrEqual(Date.now() + 2 * 3_600_000 + 1000);
    expect(Date.parse(l1.createdAt)).toBeGreaterThanOrEqual(before - 1000);
    // --expires 0 never expires; the default is 24h, as in ctr.
    expect(leases.find((l) => l.id === 'cli-l2')!.labels).toEqual({});
    const dflt = Date.parse(leases.find((l) => l.id === generated)!.labels[EXPIRE]!);
    expect(Math.abs(dflt - (Date.now() + 24 * 3_600_000))).toBeLessThan(60_000);

    const table = tableRows(await ok(['-n', 'cli-leases', 'leases', 'ls']), ['ID', 'CREATED AT', 'LABELS']);
    expect(table).toContainEqual(['cli-l2', rfc3339(new Date(Date.parse(leases.find((l) => l.id === 'cli-l2')!.createdAt))), '-']);
    expect(table.find((r) => r[0] === 'cli-l1')![2]).toBe(`${EXPIRE}=${l1.labels[EXPIRE]},purpose=test`);
    expect((await ok(['-n', 'cli-leases', 'leases', 'ls', '-q', 'id==cli-l1'])).trim()).toBe('cli-l1');

    expect(await ok(['-n', 'cli-leases', 'leases', 'rm', 'cli-l1', 'cli-l2'])).toBe('cli-l1\ncli-l2\n');
    expect(await ok(['-n', 'cli-leases', 'leases', 'rm', '--sync', generated])).toBe(`${generated}\n`);
    expect(await list()).toEqual([]);

    const missing = await strata(['-n', 'cli-leases', 'leases', 'rm', 'cli-l1']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('strata: lease "cli-l1": not found\n');
  });

  it('rejects a bad duration', async () => {
    const r = await strata(['leases', 'create', '--expires', '2 days']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('strata: invalid duration "2 days"\n');
  });
});

describe('strata plugins', () => {
  it('lists the plugins with their status', async () => {
    const out = await ok(['plugins', 'ls']);
    expect(out).toMatch(/^io\.containerd\.content\.v1 +content +\S+ +ok *$/m);
    expect(tableRows(out, ['TYPE', 'ID', 'PLATFORMS', 'STATUS'])).toContainEqual(['io.containerd.grpc.v1', 'introspection', expect.stringMatching(/^linux\//), 'ok']);

    expect((await ok(['plugin', 'ls', '-q'])).split('\n')).toContain('content');

    const detailed = await ok(['plugins', 'ls', '-d', 'type==io.containerd.content.v1']);
    expect(detailed).toMatch(/^Type: +io\.containerd\.content\.v1$/m);
    expect(detailed).toMatch(/^ID: +content$/m);

    const json = JSON.parse(await ok(['plugins', 'ls', '--json'])) as Record<string, unknown>[];
    expect(json).toContainEqual(
      expect.objectContaining({ type: 'io.containerd.content.v1', id: 'content', status: 'ok', error: null }),
    );
  });

  it('derives ok, skip and error from init_err as ctr does', () => {
    const p = (initErr?: { code: number; message: string }): Plugin => ({
      type: 't',
      id: 'i',
      requires: [],
      platforms: [],
      exports: {},
      capabilities: [],
      initErr: initErr && { ...initErr, details: [] },
    });
    expect(pluginStatus(p())).toBe('ok');
    expect(pluginStatus(p({ code: 9, message: 'no btrfs here: skip plugin' }))).toBe('skip');
    expect(pluginStatus(p({ code: 2, message: 'boom' }))).toBe('error');
  });
});

describe('strata version', () => {
  it('prints the client and server versions', async () => {
    // Not ok(): stderr may carry ctr's "WARNING: revision mismatch" when dist was rebuilt under a running daemon.
    const r = await strata(['version']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/^(WARNING: (version|revision) mismatch\n)*$/);
    const out = r.stdout;
    expect(out).toMatch(new RegExp(`^Client:\\n  Version:  ${STRATA_VERSION}\\n  Revision: .*\\n  Node version: v\\d+`));
    expect(out).toMatch(new RegExp(`\\nServer:\\n  Version:  ${STRATA_VERSION}\\n  Revision: .*\\n  UUID: [0-9a-f-]{36}\\n$`));
    const json = JSON.parse((await strata(['version', '--json'])).stdout) as { client: { version: string }; server: { version: string; uuid: string } };
    expect(json.client.version).toBe(STRATA_VERSION);
    expect(json.server.version).toBe(STRATA_VERSION);
    expect(json.server.uuid).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe('strata errors and usage', () => {
  let tmp: TempDir;
  let silent: Server;
  beforeAll(async () => {
    tmp = await tempDir('strata-cli-');
    // Something that accepts connections and never answers (it reads, so it sees clients leave).
    silent = createServer((sock) => sock.resume());
    await new Promise<void>((resolve) => silent.listen(join(tmp.path, 'silent.sock'), resolve));
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => silent.close(() => resolve()));
    await tmp.cleanup();
  });

  it('fails quickly, naming the address, when no daemon listens', async () => {
    const addr = join(tmp.path, 'nobody.sock');
    const t0 = Date.now();
    const r = await run(process.execPath, [STRATA, '--address', addr, 'ns', 'ls']);
    expect(Date.now() - t0).toBeLessThan(4000);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`strata: cannot connect to stratad at ${addr}: connect ENOENT ${addr}\n`);
  });

  it('gives up after the connect timeout when the socket does not answer', async () => {
    const addr = join(tmp.path, 'silent.sock');
    const t0 = Date.now();
    const r = await run(process.execPath, [STRATA, '-a', addr, '--connect-timeout', '500ms', 'plugins', 'ls']);
    expect(Date.now() - t0).toBeLessThan(4000);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`strata: cannot connect to stratad at ${addr}: no answer within 0.5s\n`);
  });

  it('rejects unknown commands and options', async () => {
    let r = await strata(['frobnicate']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^strata: unknown command "frobnicate"/);
    r = await strata(['content', 'frobnicate']);
    expect(r.stderr).toMatch(/^strata: unknown command "content frobnicate"/);
    r = await strata(['content', 'ls', '--frobnicate']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^strata: Unknown option '--frobnicate'/);
  });

  it('prints help', async () => {
    const top = await ok(['--help']);
    expect(top).toMatch(/^usage: strata/);
    for (const g of ['namespaces', 'content', 'leases', 'plugins', 'version']) expect(top).toContain(g);
    expect(await ok(['content'])).toMatch(/ingest/);
    expect(await ok(['content', 'ingest', '--help'])).toMatch(/--expected-digest/);
  });
});

const haveCtr = spawnSync('ctr', ['--version'], { stdio: 'ignore' }).status === 0;

describe.skipIf(!haveCtr)('output layout matches ctr byte for byte', () => {
  beforeAll(async () => {
    await ok(['namespaces', 'create', 'cli-ctr', 'a=b', 'team=storage']);
    await ok(['-n', 'cli-ctr', 'leases', 'create', '--id', 'cli-ctr-lease', 'k=v']);
    await ok(['-n', 'cli-ctr', 'leases', 'create', '--id', 'cli-ctr-2', '--expires', '0']);
  });

  const cases = [['plugins', 'ls'], ['plugins', 'ls', '-d'], ['namespaces', 'ls'], ['leases', 'ls']];
  it.each(cases.map((args) => [args.join(' '), args] as const))('%s', async (_name, args) => {
    const theirs = await ctr(d.address, args, { namespace: 'cli-ctr' });
    const ours = await strata(['-n', 'cli-ctr', ...args]);
    expect(theirs.code, `ctr: ${theirs.stderr}`).toBe(0);
    expect(ours.code, `strata: ${ours.stderr}`).toBe(0);
    expect(ours.stdout).toBe(theirs.stdout);
  });
});

describe('output helpers', () => {
  it('aligns columns like Go text/tabwriter', () => {
    expect(tabwrite('A\tBB\t\nCCC\tD\t\n')).toBe('A   BB \nCCC D  \n');
    expect(tabwrite('DIGEST\tSIZE\nsha256:abcdefgh\t1B\n', { padchar: '\t' })).toBe('DIGEST\t\tSIZE\nsha256:abcdefgh\t1B\n');
    // A line without a cell in a column ends that column's block.
    expect(tabwrite('a\tb\nxx\n' + 'long\tc\n')).toBe('a b\nxx\nlong c\n');
  });

  it('formats sizes, ages and durations like ctr', () => {
    expect(humanSize(0)).toBe('0B');
    expect(humanSize(11)).toBe('11B');
    expect(humanSize(1536)).toBe('1.536kB');
    expect(humanSize(3_145_745)).toBe('3.146MB');
    expect(humanSize(999_999)).toBe('1000kB');
    expect(humanDuration(500)).toBe('Less than a second');
    expect(humanDuration(1000)).toBe('1 second');
    expect(humanDuration(59_000)).toBe('59 seconds');
    expect(humanDuration(90_000)).toBe('About a minute');
    expect(humanDuration(45 * 60_000)).toBe('45 minutes');
    expect(humanDuration(60 * 60_000)).toBe('About an hour');
    expect(humanDuration(5 * 3_600_000)).toBe('5 hours');
    expect(humanDuration(3 * 86_400_000)).toBe('3 days');
    expect(parseDuration('24h')).toBe(86_400_000);
    expect(parseDuration('1h30m')).toBe(5_400_000);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('300ms')).toBe(300);
    expect(parseDuration('0')).toBe(0);
    expect(() => parseDuration('5')).toThrow('invalid duration "5"');
  });
});
