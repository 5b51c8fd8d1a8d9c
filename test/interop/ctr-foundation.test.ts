/**
 * The unmodified ctr (Debian's containerd 1.6) against stratad: the foundation commands a containerd user
 * runs for namespaces, content and leases, checked on their printed output.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { ctr, tableRows as rows } from '../helpers/ctr.js';
import { sha256 } from '../helpers/data.js';

let d: StartedDaemon;
const run = (args: string[], opts: { namespace?: string; input?: string | Buffer } = {}) => ctr(d.address, args, opts);


beforeAll(async () => {
  d = await startDaemon();
});
afterAll(async () => {
  await stopAll();
  await d?.dir.cleanup();
});

describe('ctr against stratad', () => {
  it('ctr version shows the server', async () => {
    const r = await run(['version']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Server:\s*\n\s*Version:\s+v\d+\.\d+\.\d+/);
    expect(r.stdout).toMatch(/UUID: [0-9a-f-]{36}/);
  });

  it('ctr plugins ls lists the loaded plugins with their status', async () => {
    const r = await run(['plugins', 'ls']);
    expect(r.code).toBe(0);
    const table = rows(r.stdout);
    expect(r.stdout.split('\n')[0]).toMatch(/^TYPE\s+ID\s+PLATFORMS\s+STATUS/);
    const find = (type: string, id: string) => table.find((row) => row[0] === type && row[1] === id);
    for (const [type, id] of [
      ['io.containerd.content.v1', 'content'],
      ['io.containerd.metadata.v1', 'sqlite'],
      ['io.containerd.grpc.v1', 'content'],
      ['io.containerd.grpc.v1', 'leases'],
      ['io.containerd.grpc.v1', 'namespaces'],
      ['io.containerd.grpc.v1', 'introspection'],
    ]) {
      expect(find(type!, id!), `${type} ${id}`).toEqual([type, id, expect.stringMatching(/^linux\//), 'ok']);
    }
  });

  it('ctr namespaces create, ls, label, rm', async () => {
    expect((await run(['namespaces', 'create', 'ctr-ns', 'team=storage'])).code).toBe(0);
    let ls = await run(['namespaces', 'ls']);
    expect(rows(ls.stdout)).toContainEqual(['ctr-ns', 'team=storage']);
    expect((await run(['namespaces', 'label', 'ctr-ns', 'tier=gold'])).code).toBe(0);
    ls = await run(['namespaces', 'ls']);
    const row = rows(ls.stdout).find((r) => r[0] === 'ctr-ns')!;
    expect(row[1]!.split(',').sort()).toEqual(['team=storage', 'tier=gold']);
    // An empty value removes the label, as in containerd.
    expect((await run(['namespaces', 'label', 'ctr-ns', 'team='])).code).toBe(0);
    expect(rows((await run(['namespaces', 'ls'])).stdout)).toContainEqual(['ctr-ns', 'tier=gold']);
    const dup = await run(['namespaces', 'create', 'ctr-ns']);
    expect(dup.code).not.toBe(0);
    expect(dup.stderr).toMatch(/already exists/);
    expect((await run(['namespaces', 'rm', 'ctr-ns'])).code).toBe(0);
    expect((await run(['namespaces', 'ls', '-q'])).stdout.split('\n')).not.toContain('ctr-ns');
  });

  it('ctr namespaces rm refuses a namespace that still holds content', async () => {
    const data = 'keeps the namespace alive\n';
    expect((await run(['content', 'ingest', 'k'], { namespace: 'busy', input: data })).code).toBe(0);
    const rm = await run(['namespaces', 'rm', 'busy']);
    expect(rm.code).not.toBe(0);
    expect(rm.stderr).toMatch(/namespace "busy" must be empty, but it still has blobs: failed precondition/);
    expect((await run(['content', 'ls', '-q'], { namespace: 'busy' })).stdout.trim()).toBe(sha256(data));
  });

  it('ctr content ingest from stdin with expected digest and size, then ls, get, label, rm', async () => {
    const data = 'hello from ctr\n'.repeat(100);
    const dg = sha256(data);
    const ing = await run(['content', 'ingest', '--expected-digest', dg, '--expected-size', String(data.length), 'ctr-ref'], {
      input: data,
    });
    expect(ing.code, ing.stderr).toBe(0);

    const ls = await run(['content', 'ls']);
    const row = rows(ls.stdout).find((r) => r[0] === dg);
    expect(row?.[1]).toBe('1.5kB'); // ctr's own (decimal) formatting of 1500 bytes
    expect(row?.at(-1)).toBe('-');

    const get = await run(['content', 'get', dg]);
    expect(get.stdout).toBe(data);

    expect((await run(['content', 'label', dg, 'owner=ctr', 'x=1'])).code).toBe(0);
    const labelled = rows((await run(['content', 'ls'])).stdout).find((r) => r[0] === dg)!;
    expect(labelled.at(-1)!.split(',').sort()).toEqual(['owner=ctr', 'x=1']);

    expect((await run(['content', 'rm', dg])).code).toBe(0);
    expect((await run(['content', 'ls', '-q'])).stdout).not.toContain(dg);
    const gone = await run(['content', 'get', dg]);
    expect(gone.code).not.toBe(0);
    expect(gone.stderr).toMatch(/not found/);
  });

  it('ctr content ingest fails on a digest mismatch and stores nothing under either digest', async () => {
    const data = 'not what you expected\n';
    const wrong = sha256('something else');
    const r = await run(['content', 'ingest', '--expected-digest', wrong, 'mismatch'], { input: data });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/unexpected commit digest|failed precondition/);
    const ls = (await run(['content', 'ls', '-q'])).stdout;
    expect(ls).not.toContain(wrong);
    expect(ls).not.toContain(sha256(data));
  });

  it('ctr content active shows an interrupted ingest', async () => {
    // stdin ends before the expected size: ctr fails and the partial ingest stays active.
    const r = await run(['content', 'ingest', '--expected-size', '100', 'partial-ref'], { input: 'only 19 bytes here\n' });
    expect(r.code).not.toBe(0);
    const active = await run(['content', 'active']);
    expect(active.code).toBe(0);
    const row = rows(active.stdout).find((x) => x[0] === 'partial-ref');
    expect(row?.[1]).toBe('19B');
  });

  it('ctr leases create, ls, rm', async () => {
    const created = await run(['leases', 'create', '--id', 'ctr-lease', '--expires', '1h', 'purpose=test']);
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout.trim()).toBe('ctr-lease');
    const ls = await run(['leases', 'ls']);
    const row = rows(ls.stdout).find((r) => r[0] === 'ctr-lease')!;
    expect(row[1]).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(row[2]).toMatch(/containerd\.io\/gc\.expire=\d{4}-/);
    expect(row[2]).toMatch(/purpose=test/);
    const generated = await run(['leases', 'create']);
    expect(generated.stdout.trim()).toMatch(/^\d+-[A-Za-z0-9_-]+$/);
    expect((await run(['leases', 'rm', 'ctr-lease', generated.stdout.trim()])).code).toBe(0);
    expect((await run(['leases', 'ls', '-q'])).stdout.trim()).toBe('');
    const missing = await run(['leases', 'rm', 'ctr-lease']);
    expect(missing.stderr).toMatch(/not found/);
  });
});
