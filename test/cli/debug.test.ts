/**
 * strata debug against a real stratad's debug endpoint ([debug] address): a CPU profile and a heap snapshot
 * that parse as V8's formats (what Chrome DevTools loads), on a unix socket and on loopback host:port; the
 * state of calls in flight; one profile at a time; a bad request and an unreachable endpoint.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile, stat } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { run } from '../helpers/ctr.js';
import { STRATA } from '../helpers/paths.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { freePort } from '../metrics/helpers.js';

let d: StartedDaemon;
let tcp: StartedDaemon;
let tmp: TempDir;
let port: number;
const sock = () => join(tmp.path, 'run', 'debug.sock');

const strata = (args: string[]) => run(process.execPath, [STRATA, ...args]);

beforeAll(async () => {
  tmp = await tempDir('strata-debug-test-');
  d = await startDaemon({ config: `[debug]\naddress = "${sock()}"\n` });
  port = await freePort();
  tcp = await startDaemon({ config: `[debug]\naddress = "127.0.0.1:${port}"\n` });
});

afterAll(async () => {
  await stopAll();
  await tmp?.cleanup();
});

function getStatus(path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: sock(), path }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('strata debug', () => {
  it('profile writes a V8 .cpuprofile over the requested seconds', async () => {
    expect((await stat(sock())).isSocket()).toBe(true);
    expect(((await stat(sock())).mode & 0o777).toString(8)).toBe('660');
    const out = join(tmp.path, 'p.cpuprofile');
    const t0 = Date.now();
    const r = await strata(['debug', 'profile', '--seconds', '1', '-o', out, '--debug-address', sock()]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(r.stdout).toMatch(new RegExp(`^wrote ${out} \\(.+\\)\\n$`));
    const profile = JSON.parse(await readFile(out, 'utf8')) as { nodes: { callFrame: { functionName: string } }[]; startTime: number; endTime: number; samples: number[] };
    expect(profile.nodes.length).toBeGreaterThan(0);
    expect(profile.nodes[0]!.callFrame.functionName).toBe('(root)');
    expect(profile.endTime - profile.startTime).toBeGreaterThanOrEqual(900_000); // microseconds
    expect(Array.isArray(profile.samples)).toBe(true);
    expect(d.logs).toContain('"msg":"cpu profile"');
  });

  it('heap writes a V8 .heapsnapshot', async () => {
    const out = join(tmp.path, 'h.heapsnapshot');
    const r = await strata(['debug', 'heap', '-o', out, '--debug-address', sock()]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const snap = JSON.parse(await readFile(out, 'utf8')) as { snapshot: { meta: { node_fields: string[] }; node_count: number }; nodes: number[]; strings: string[] };
    expect(snap.snapshot.meta.node_fields).toContain('name');
    expect(snap.snapshot.node_count).toBeGreaterThan(1000);
    expect(snap.nodes.length).toBe(snap.snapshot.node_count * snap.snapshot.meta.node_fields.length);
    // Strata's own classes are in it.
    expect(snap.strings).toContain('MetadataStore');
  });

  it('works on a loopback host:port, and writes to stdout with -o -', async () => {
    const r = await strata(['debug', 'state', '--debug-address', `127.0.0.1:${port}`]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ calls: [], tasks: [] });
    const p = await strata(['debug', 'profile', '--seconds', '0.2', '-o', '-', '--debug-address', `127.0.0.1:${port}`]);
    expect(p.code).toBe(0);
    expect((JSON.parse(p.stdout) as { nodes: unknown[] }).nodes.length).toBeGreaterThan(0);
    expect(tcp.logs).toContain(`"msg":"debug endpoint serving","address":"127.0.0.1:${port}"`);
  });

  it('takes one CPU profile at a time and checks its arguments', async () => {
    const profiles = () => d.logs.split('"msg":"cpu profile"').length;
    const before = profiles();
    const first = getStatus('/debug/pprof/profile?seconds=1');
    while (profiles() === before) await new Promise((r) => setTimeout(r, 20));
    expect(await getStatus('/debug/pprof/profile?seconds=1')).toEqual({ status: 409, body: 'a CPU profile is already being taken\n' });
    expect((await first).status).toBe(200);
    expect(await getStatus('/debug/pprof/profile?seconds=-1')).toEqual({ status: 400, body: 'seconds must be a number above 0 and at most 600\n' });
    expect((await getStatus('/debug/nothing')).status).toBe(404);
    const bad = await strata(['debug', 'profile', '--seconds', 'x', '--debug-address', sock()]);
    expect(bad.stderr).toBe('strata: --seconds must be a positive number: x\n');
  });

  it('says so when the endpoint is not there', async () => {
    const r = await strata(['debug', 'heap', '--debug-address', join(tmp.path, 'none.sock')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^strata: cannot reach stratad's debug endpoint at .*none\.sock: connect ENOENT/);
  });
});
