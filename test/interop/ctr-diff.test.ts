/**
 * The unmodified ctr (Debian's containerd 1.6) running `ctr snapshot diff` against stratad. ctr takes a
 * lease, views the parent (or the second snapshot), calls Diff on the diff service, and copies the blob to
 * its stdout; with --keep the blob stays (gc.root label). Checked: the bytes ctr prints are the layer (gzip or
 * plain tar, only the changes), `ctr content ls` lists it with its labels, and ctr's temporary views and
 * lease are gone afterwards.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { ctrAt } from '../helpers/containerd.js';
import { tableRows, type RunResult } from '../helpers/ctr.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { listTar } from '../diff/helpers.js';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** ctr with its stdout as bytes (the layer is binary). */
function ctrRaw(address: string, args: string[]): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn('ctr', ['--address', address, '--namespace', 'default', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    p.stdout.on('data', (b: Buffer) => out.push(b));
    p.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 60_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr });
    });
  });
}

const ok = (r: RunResult | { code: number | null; stderr: string }, what: string) =>
  expect(r.code, `${what}\nstderr: ${r.stderr}`).toBe(0);

describe('ctr snapshot diff against stratad', () => {
  let d: StartedDaemon;
  let dir: TempDir;
  const ctr = (args: string[]) => ctrAt(d.address, args);

  beforeAll(async () => {
    dir = await tempDir('strata-ctr-diff-');
    d = await startDaemon();
  });
  afterAll(async () => {
    await stopAll();
    await d?.dir.cleanup();
    await dir?.cleanup();
  });

  /** The mount `ctr snapshot mounts` prints for key: type, source and options. */
  async function mountOf(key: string): Promise<{ type: string; source: string; options: string[] }> {
    const r = await ctr(['snapshot', 'mounts', join(dir.path, 't'), key]);
    ok(r, `ctr snapshot mounts ${key}`);
    const m = /^mount -t (\S+) (\S+) \S+ -o (\S+)\n?$/.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    return { type: m![1]!, source: m![2]!, options: m![3]!.split(',') };
  }

  it('prints the layer of a first snapshot, keeps it with --keep, and cleans up its views and lease', async () => {
    ok(await ctr(['snapshot', 'prepare', 'k1']), 'prepare k1');
    const m = await mountOf('k1');
    expect(m.type).toBe('bind');
    await mkdir(join(m.source, 'etc'));
    await writeFile(join(m.source, 'etc/hello.txt'), 'hello from ctr\n');

    // --keep labels the blob containerd.io/gc.root, so it outlives ctr's lease.
    const kept = await ctrRaw(d.address, ['snapshot', 'diff', '--keep', '--label', 'com.example/by=ctr', 'k1']);
    ok(kept, 'ctr snapshot diff --keep k1');
    expect(kept.stdout.subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]));
    const entries = await listTar(kept.stdout);
    expect(entries.map((e) => e.name)).toEqual(['etc/', 'etc/hello.txt']);
    expect(entries[1]!.body?.toString()).toBe('hello from ctr\n');
    const digest = sha(kept.stdout);
    const ls = await ctr(['content', 'ls']);
    ok(ls, 'ctr content ls');
    const row = tableRows(ls.stdout, ['DIGEST', 'SIZE', 'AGE', 'LABELS']).find((x) => x[0] === digest);
    expect(row, ls.stdout).toBeDefined();
    const labels = row![3]!;
    expect(labels).toContain(`containerd.io/uncompressed=${sha(gunzipSync(kept.stdout))}`);
    expect(labels).toContain('containerd.io/gc.root=');
    expect(labels).toContain('com.example/by=ctr');

    // The layer is deterministic (no deletions, same tree): the same bytes again.
    const again = await ctrRaw(d.address, ['snapshot', 'diff', 'k1']);
    ok(again, 'ctr snapshot diff k1');
    expect(again.stdout.equals(kept.stdout)).toBe(true);

    // ctr's temporary parent views are removed, and so is its lease.
    const snaps = tableRows((await ctr(['snapshot', 'ls'])).stdout).map((x) => x[0]);
    expect(snaps).toEqual(['k1']);
    const leases = await ctr(['leases', 'ls']);
    ok(leases, 'ctr leases ls');
    expect(tableRows(leases.stdout)).toEqual([]);
  });

  it('diffs a child snapshot against its parent (gzip and plain tar) and two snapshots given by name', async () => {
    ok(await ctr(['snapshot', 'commit', 'c1', 'k1']), 'commit c1');
    ok(await ctr(['snapshot', 'prepare', 'k2', 'c1']), 'prepare k2 c1');
    const m = await mountOf('k2');
    expect(m.type).toBe('overlay');
    const upper = m.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);
    await writeFile(join(upper, 'added'), 'only in k2');

    const gz = await ctrRaw(d.address, ['snapshot', 'diff', 'k2']);
    ok(gz, 'ctr snapshot diff k2');
    expect((await listTar(gz.stdout)).map((e) => e.name)).toEqual(['added']);

    const plain = await ctrRaw(d.address, ['snapshot', 'diff', '--media-type', 'application/vnd.oci.image.layer.v1.tar', 'k2']);
    ok(plain, 'ctr snapshot diff --media-type tar k2');
    expect(plain.stdout.subarray(0, 5).toString()).toBe('added');
    expect(plain.stdout.equals(gunzipSync(gz.stdout))).toBe(true);

    const two = await ctrRaw(d.address, ['snapshot', 'diff', 'c1', 'k2']);
    ok(two, 'ctr snapshot diff c1 k2');
    expect((await listTar(two.stdout)).map((e) => [e.name, e.body?.toString()])).toEqual([['added', 'only in k2']]);

    const bad = await ctrRaw(d.address, ['snapshot', 'diff', '--media-type', 'application/x-nope', 'k2']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('unsupported diff media type');

    const snaps = tableRows((await ctr(['snapshot', 'ls'])).stdout).map((x) => x[0]).sort();
    expect(snaps).toEqual(['c1', 'k2']);
  });
});
