/**
 * The Prometheus endpoint of a real stratad ([metrics] on loopback): go-grpc-prometheus's counters and histogram
 * per method and code, the content, snapshot, pull, GC and task gauges, process metrics; the page passes
 * `promtool check metrics`, and a real Prometheus (Debian's) scrapes it and answers a query for it. Also the
 * SIGUSR1 dump of calls in flight, with the daemon serving on.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { run } from '../helpers/ctr.js';
import { STRATA } from '../helpers/paths.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { buildOciLayout, makeLayerTar } from '../helpers/oci-layout.js';
import { buildImage, busyboxPlatform } from '../helpers/images.js';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { freePort } from './helpers.js';

const PROMETHEUS = '/usr/bin/prometheus';
const PROMTOOL = '/usr/bin/promtool';

/** Sample lines as name{labels} -> value. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return out;
}

const grpcLabels = (service: string, method: string, type: string, code?: string) =>
  `{${code ? `grpc_code="${code}",` : ''}grpc_method="${method}",grpc_service="${service}",grpc_type="${type}"}`;
const SNAPSHOTS = 'containerd.services.snapshots.v1.Snapshots';

let d: StartedDaemon;
let c: StrataClient;
let port: number;
let tmp: TempDir;
const url = () => `http://127.0.0.1:${port}/v1/metrics`;
/** Objects the test keeps: the GC scheduler is on (for its metrics) and would take unreferenced ones. */
const ROOT = { 'containerd.io/gc.root': 'metrics-test' };

async function eventually(check: () => Promise<boolean>, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

async function scrape(): Promise<{ text: string; m: Map<string, number> }> {
  const res = await fetch(url());
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
  const text = await res.text();
  return { text, m: samples(text) };
}

beforeAll(async () => {
  tmp = await tempDir('strata-metrics-test-');
  port = await freePort();
  d = await startDaemon({ config: `[metrics]\naddress = "127.0.0.1:${port}"\ngrpc_histogram = true\n`, gc: true });
  c = d.client('metrics-test');
});

afterAll(async () => {
  c?.close();
  await stopAll();
  await stopAllRegistries();
  await tmp?.cleanup();
});

describe('/v1/metrics', () => {
  it('serves the text format, which promtool accepts, and only on /v1/metrics', async () => {
    const { text } = await scrape();
    const check = await run(PROMTOOL, ['check', 'metrics'], { input: text });
    expect(check.stderr + check.stdout).toBe('');
    expect(check.code).toBe(0);
    expect((await fetch(`http://127.0.0.1:${port}/metrics`)).status).toBe(404);
    expect(d.logs).toContain(`"msg":"metrics serving","address":"127.0.0.1:${port}","path":"/v1/metrics"`);
  });

  it('exports every served method at zero before its first call, as go-grpc-prometheus does', async () => {
    const { m } = await scrape();
    expect(m.get(`grpc_server_started_total${grpcLabels(SNAPSHOTS, 'Usage', 'unary')}`)).toBe(0);
    expect(m.get(`grpc_server_handled_total${grpcLabels(SNAPSHOTS, 'Usage', 'unary', 'Unauthenticated')}`)).toBe(0);
    expect(m.has(`grpc_server_started_total${grpcLabels('containerd.services.content.v1.Content', 'Write', 'bidi_stream')}`)).toBe(true);
    expect(m.has(`grpc_server_handling_seconds_bucket{grpc_method="Usage",grpc_service="${SNAPSHOTS}",grpc_type="unary",le="+Inf"}`)).toBe(true);
  });

  it('counts calls by method and code, their messages, and their latency', async () => {
    const before = (await scrape()).m;
    const get = (m: Map<string, number>, k: string) => m.get(k) ?? 0;
    await c.call(c.snapshots, c.snapshots.prepare, { snapshotter: 'native', key: 'm-active', parent: '', labels: ROOT });
    const missing = await c.call(c.snapshots, c.snapshots.stat, { snapshotter: 'native', key: 'nope' }).catch((e: Error) => e);
    expect(missing).toBeInstanceOf(Error);
    const listed = await c.collect(c.snapshots.list({ snapshotter: 'native', filters: [] }, c.metadata()));
    const blob = randomBytes(3 << 20);
    await c.writeBlob([blob.subarray(0, 1 << 20), blob.subarray(1 << 20)], { ref: 'm-blob', total: blob.length, labels: ROOT });

    // The client has its last answer a moment before the server's handler returns.
    const write = grpcLabels('containerd.services.content.v1.Content', 'Write', 'bidi_stream');
    const writeOk = `grpc_server_handled_total${grpcLabels('containerd.services.content.v1.Content', 'Write', 'bidi_stream', 'OK')}`;
    await eventually(async () => get((await scrape()).m, writeOk) - get(before, writeOk) === 1, 'the Write call to end');
    const after = (await scrape()).m;
    const delta = (k: string) => get(after, k) - get(before, k);
    expect(delta(`grpc_server_started_total${grpcLabels(SNAPSHOTS, 'Prepare', 'unary')}`)).toBe(1);
    expect(delta(`grpc_server_handled_total${grpcLabels(SNAPSHOTS, 'Prepare', 'unary', 'OK')}`)).toBe(1);
    expect(delta(`grpc_server_handled_total${grpcLabels(SNAPSHOTS, 'Stat', 'unary', 'NotFound')}`)).toBe(1);
    expect(delta(`grpc_server_handled_total${grpcLabels(SNAPSHOTS, 'Stat', 'unary', 'OK')}`)).toBe(0);
    expect(delta(`grpc_server_msg_received_total${grpcLabels(SNAPSHOTS, 'Prepare', 'unary')}`)).toBe(1);
    expect(delta(`grpc_server_msg_sent_total${grpcLabels(SNAPSHOTS, 'Stat', 'unary')}`)).toBe(0);
    expect(delta(`grpc_server_msg_sent_total${grpcLabels(SNAPSHOTS, 'List', 'server_stream')}`)).toBe(listed.length);
    expect(delta(`grpc_server_handled_total${grpcLabels(SNAPSHOTS, 'List', 'server_stream', 'OK')}`)).toBe(1);
    // content Write: STAT, two WRITEs and COMMIT, each answered, and the last answer once more at the end, as
    // containerd's content server sends it (docs/go-interop.md).
    expect(delta(`grpc_server_msg_received_total${write}`)).toBe(4);
    expect(delta(`grpc_server_msg_sent_total${write}`)).toBe(5);
    const hist = `{grpc_method="Prepare",grpc_service="${SNAPSHOTS}",grpc_type="unary"}`;
    expect(delta(`grpc_server_handling_seconds_count${hist}`)).toBe(1);
    expect(delta(`grpc_server_handling_seconds_bucket{grpc_method="Prepare",grpc_service="${SNAPSHOTS}",grpc_type="unary",le="+Inf"}`)).toBe(1);
    expect(get(after, `grpc_server_handling_seconds_sum${hist}`)).toBeGreaterThan(0);
  });

  it('reports content, snapshots per snapshotter, GC and tasks', async () => {
    const { m } = await scrape();
    expect(m.get('strata_content_blobs')).toBe(1);
    expect(m.get('strata_content_bytes')).toBe(3 << 20);
    expect(m.get('strata_snapshots{kind="active",snapshotter="native"}')).toBe(1);
    expect(m.get('strata_snapshots{kind="committed",snapshotter="native"}')).toBe(0);
    expect(m.get('strata_snapshot_usage_bytes{snapshotter="native"}')).toBeGreaterThanOrEqual(0);
    expect(m.get('strata_tasks{status="running"}')).toBe(0);
    expect(m.has('strata_gc_runs_total')).toBe(true);
    expect(m.get('strata_gc_removed_objects_total{type="content"}')).toBeGreaterThanOrEqual(0);

    // A committed snapshot with a file in it: its usage shows up (and is remembered once committed).
    const mounts = await c.call(c.snapshots, c.snapshots.prepare, { snapshotter: 'native', key: 'm-commit', parent: '', labels: ROOT });
    const dir = (mounts.mounts[0] as { source: string }).source;
    await writeFile(join(dir, 'payload'), randomBytes(200_000));
    await c.call(c.snapshots, c.snapshots.commit, { parent: '', snapshotter: 'native', name: 'm-committed', key: 'm-commit', labels: ROOT });
    const again = (await scrape()).m;
    expect(again.get('strata_snapshots{kind="committed",snapshotter="native"}')).toBe(1);
    expect(again.get('strata_snapshot_usage_bytes{snapshotter="native"}')).toBeGreaterThanOrEqual(200_000);
    expect(again.get('process_open_fds')).toBeGreaterThan(0);
    expect(again.get('process_resident_memory_bytes')).toBeGreaterThan(0);
    const start = again.get('process_start_time_seconds')!;
    expect(Math.abs(start - Date.now() / 1000)).toBeLessThan(600);
    expect(again.has('nodejs_eventloop_lag_p99_seconds')).toBe(true);
    expect(again.get('nodejs_heap_size_used_bytes')).toBeGreaterThan(0);
  });

  it('counts pulls: outcome, bytes downloaded and duration', async () => {
    const reg: StartedRegistry = await startRegistry();
    const image = await buildOciLayout(join(tmp.path, 'image'), {
      layers: [await makeLayerTar({ 'etc/hello': 'hello\n', 'bin/tool': randomBytes(300_000) })],
      gzip: true,
      refName: 'v1',
    });
    await reg.pushOciLayout(image.dir, 'test/metrics:v1');
    const before = (await scrape()).m;
    const pulled = await run(process.execPath, [STRATA, '-a', d.address, '-n', 'pulls', 'images', 'pull', '--plain-http', '--snapshotter', 'native', '-q', `${reg.host}/test/metrics:v1`]);
    expect(pulled.stderr).toBe('');
    expect(pulled.code).toBe(0);
    const failed = await run(process.execPath, [STRATA, '-a', d.address, '-n', 'pulls', 'images', 'pull', '--plain-http', '-q', `${reg.host}/test/missing:v1`]);
    expect(failed.code).toBe(1);
    const after = (await scrape()).m;
    expect(after.get('strata_image_pulls_total{outcome="success"}')).toBe(1);
    expect(after.get('strata_image_pulls_total{outcome="failure"}')).toBe(1);
    expect(after.get('strata_image_pull_duration_seconds_count')).toBe(2);
    // Everything the pull stored was downloaded by it (nothing was there before in this namespace's blobs).
    const added = after.get('strata_content_bytes')! - before.get('strata_content_bytes')!;
    expect(added).toBeGreaterThan(300_000);
    expect(after.get('strata_image_pull_bytes_total')).toBe(added);
    const pullCalls = grpcLabels('strata.services.transfer.v1.Transfer', 'Pull', 'server_stream');
    expect(after.get(`grpc_server_started_total${pullCalls}`)).toBe(2);
  });

  it('is scraped by a real Prometheus, which answers a query for it', async () => {
    const promPort = await freePort();
    const dir = join(tmp.path, 'prometheus');
    await run('mkdir', ['-p', join(dir, 'data')]);
    const cfg = join(dir, 'prometheus.yml');
    await writeFile(
      cfg,
      `global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: strata\n    metrics_path: /v1/metrics\n    static_configs:\n      - targets: ['127.0.0.1:${port}']\n`,
    );
    const check = await run(PROMTOOL, ['check', 'config', cfg]);
    expect(check.code).toBe(0);
    const prom: ChildProcess = spawn(
      PROMETHEUS,
      [`--config.file=${cfg}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${promPort}`],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let logs = '';
    prom.stdout!.on('data', (b: Buffer) => (logs += b.toString()));
    prom.stderr!.on('data', (b: Buffer) => (logs += b.toString()));
    try {
      const query = async (q: string) => {
        const res = await fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(q)}`);
        return (await res.json()) as { status: string; data: { result: { metric: Record<string, string>; value: [number, string] }[] } };
      };
      let up: string | undefined;
      let handled: { metric: Record<string, string>; value: [number, string] }[] = [];
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline) {
        if (prom.exitCode !== null) throw new Error(`prometheus exited:\n${logs}`);
        try {
          up = (await query('up{job="strata"}')).data.result[0]?.value[1];
          handled = (await query(`grpc_server_handled_total{grpc_method="Prepare",grpc_code="OK"}`)).data.result;
          if (up === '1' && handled.length > 0) break;
        } catch {
          // not listening yet
        }
        await sleep(250);
      }
      expect(up, logs).toBe('1');
      expect(handled).toHaveLength(1);
      expect(handled[0]!.metric).toMatchObject({ grpc_service: SNAPSHOTS, grpc_type: 'unary', job: 'strata' });
      expect(Number(handled[0]!.value[1])).toBeGreaterThanOrEqual(2);
      // A histogram quantile over the scraped buckets evaluates.
      const q = await query(`histogram_quantile(0.99, rate(grpc_server_handling_seconds_bucket{grpc_method="Prepare"}[1m]))`);
      expect(q.status).toBe('success');
    } finally {
      prom.kill('SIGTERM');
      await new Promise((resolve) => (prom.exitCode !== null ? resolve(null) : prom.once('exit', resolve)));
    }
  });
});

describe('SIGUSR1', () => {
  it('writes the calls in flight and the tasks to the log, and the daemon keeps serving', async () => {
    // A subscription stays in flight until cancelled.
    const sub = c.events.subscribe({ filters: [] }, c.metadata());
    sub.on('error', () => undefined);
    await sleep(300);
    const mark = d.logs.length;
    d.proc.kill('SIGUSR1');
    let line: string | undefined;
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && !line) {
      line = d.logs.slice(mark).split('\n').find((l) => l.includes('"msg":"state dump (SIGUSR1)"'));
      await sleep(50);
    }
    sub.cancel();
    expect(line, d.logs.slice(mark)).toBeDefined();
    const rec = JSON.parse(line!) as { level: string; calls: { method: string; namespace: string; type: string; ageSeconds: number }[]; tasks: unknown[] };
    expect(rec.level).toBe('info');
    const call = rec.calls.find((x) => x.method === '/containerd.services.events.v1.Events/Subscribe');
    expect(call).toMatchObject({ namespace: 'metrics-test', type: 'server_stream' });
    expect(call!.ageSeconds).toBeGreaterThan(0);
    expect(rec.tasks).toEqual([]);
    // Node's own SIGUSR1 (open the inspector) did not happen, and the daemon answers.
    expect(d.logs).not.toContain('Debugger listening');
    expect(d.proc.exitCode).toBe(null);
    const v = await c.call(c.version, c.version.version, {});
    expect(v.version).not.toBe('');
    expect(existsSync(d.address)).toBe(true);
  });
});

describe('tasks', () => {
  it('are in the SIGUSR1 dump (id, pid, status) and counted by status', async () => {
    const strata = (args: string[]) => run(process.execPath, [STRATA, '-a', d.address, '-n', 'metrics-tasks', ...args], { timeoutMs: 60_000 });
    const busybox = await buildImage(tmp.path, { basename: 'busybox', name: 'docker.io/library/busybox:metrics', platforms: [await busyboxPlatform()] });
    const imp = await strata(['image', 'import', busybox.archivePath]);
    expect(imp.code, imp.stderr).toBe(0);
    const started = await strata(['run', '-d', 'docker.io/library/busybox:metrics', 'sleeper', 'sleep', '300']);
    expect(started.code, started.stderr).toBe(0);
    try {
      await eventually(async () => (await scrape()).m.get('strata_tasks{status="running"}') === 1, 'a running task in the metrics', 20_000);
      const mark = d.logs.length;
      d.proc.kill('SIGUSR1');
      let line: string | undefined;
      await eventually(async () => {
        line = d.logs.slice(mark).split('\n').find((l) => l.includes('"msg":"state dump (SIGUSR1)"'));
        return line !== undefined;
      }, 'the dump');
      const rec = JSON.parse(line!) as { tasks: { namespace: string; id: string; pid: number; status: string }[] };
      expect(rec.tasks).toHaveLength(1);
      expect(rec.tasks[0]).toMatchObject({ namespace: 'metrics-tasks', id: 'sleeper', status: 'running' });
      expect(rec.tasks[0]!.pid).toBeGreaterThan(1);
    } finally {
      await strata(['task', 'rm', '-f', 'sleeper']);
      await strata(['container', 'rm', 'sleeper']);
    }
    expect((await scrape()).m.get('strata_tasks{status="running"}')).toBe(0);
  });
});
