/**
 * containerd's Go client library (1.6.20, unmodified, Debian's sources) against a real stratad, as its users
 * (nerdctl, BuildKit, k3s...) drive it: test/go/gopath/src/strata.test/interop/client runs each behaviour in
 * order and prints "PASS <check>" or "FAIL <check>: <reason>"; each check is one test here. The image comes
 * from a real docker-registry on loopback (a busybox image built from the host's /bin/busybox); tasks run on
 * runc. The daemon runs with its GC scheduler on (lease expiry is the collector's job).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { checkLines, goBinary, runGo, type GoResult } from '../helpers/go.js';
import { buildImage, busyboxPlatform } from '../helpers/images.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

// The default spec puts a container in the cgroup /<namespace>/<id>: a namespace of this file's own.
const NS = 'go-client-test';
const CHECKS = [
  'connect with a default namespace that does not exist yet',
  'pull with unpack from the local registry',
  'image is unpacked',
  'container with a new snapshot and the image config',
  'task with cio streams, wait, start, exit status and output',
  'task exec',
  'task pids, pause, resume and metrics; containers listed by label',
  'images and content listed with filters',
  "a container snapshot's diff (rootfs.CreateDiff) applied to a new snapshot",
  'events published by the client reach a subscriber',
  'push to the local registry',
  'export and import',
  'content ReaderAt at offsets',
  'leases with expiry and resources, synchronous delete',
  'snapshot usage and walk with filters',
  'filtered event subscription',
  'introspection with filters',
  'error kinds',
  'fetch without unpack, then unpack; image size and usage',
  'container labels set and extensions read back',
  'ingest status, list with filters and abort',
  'image delete with synchronous garbage collection',
];

let d: StartedDaemon;
let reg: StartedRegistry;
let dir: TempDir;
let run: GoResult;

function mountsUnder(prefix: string): string[] {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m.startsWith(prefix));
}

/** Whatever a failed check left running: monitors, runc containers, mounts, the namespace's cgroups. */
function cleanupRuntime(): void {
  const root = join(d.state, 'io.containerd.runtime.v2.task');
  if (existsSync(root)) {
    for (const ns of readdirSync(root).filter((n) => !n.startsWith('.'))) {
      for (const id of readdirSync(join(root, ns))) {
        try {
          process.kill((JSON.parse(readFileSync(join(root, ns, id, 'monitor.json'), 'utf8')) as { pid: number }).pid, 'SIGKILL');
        } catch {
          // no monitor
        }
      }
    }
  }
  const runcRoot = join(d.state, 'runc');
  if (existsSync(runcRoot)) {
    for (const ns of readdirSync(runcRoot)) {
      for (const id of readdirSync(join(runcRoot, ns))) {
        try {
          execFileSync('runc', ['--root', join(runcRoot, ns), 'delete', '--force', id], { stdio: 'ignore' });
        } catch {
          // gone
        }
      }
    }
  }
  for (const m of mountsUnder(d.dir.path).reverse()) {
    try {
      execFileSync('umount', ['-l', m], { stdio: 'ignore' });
    } catch {
      // gone
    }
  }
  for (const ctl of readdirSync('/sys/fs/cgroup')) {
    try {
      rmdirSync(join('/sys/fs/cgroup', ctl, NS));
    } catch {
      // not there (or not a hierarchy)
    }
  }
}

beforeAll(async () => {
  const bin = await goBinary('client');
  dir = await tempDir('strata-go-client-');
  [d, reg] = await Promise.all([startDaemon({ gc: true }), startRegistry()]);
  const img = await buildImage(dir.path, { basename: 'busybox', platforms: [await busyboxPlatform({ compression: 'gzip' })] });
  await reg.pushOciLayout(img.layoutDir, 'busybox:go');
  run = await runGo(
    bin,
    ['-address', d.address, '-namespace', NS, '-ref', `${reg.host}/busybox:go`, '-push-ref', `${reg.host}/pushed/busybox:go`],
    { timeoutMs: 170_000 },
  );
}, 180_000);

afterAll(async () => {
  if (d) {
    await stopAll();
    cleanupRuntime();
    await d.dir.cleanup();
  }
  await stopAllRegistries();
  await dir?.cleanup();
});

describe("containerd's Go client library against stratad", () => {
  it('runs every check and exits 0', () => {
    const results = checkLines(run.stdout);
    expect([...results.keys()]).toEqual(CHECKS);
    expect(run.code, `${run.stdout}\n${run.stderr.slice(-3000)}`).toBe(0);
  });

  for (const check of CHECKS) {
    it(`the client library can: ${check}`, () => {
      const results = checkLines(run.stdout);
      expect(results.get(check), `${run.stdout}\n--- stderr:\n${run.stderr.slice(-3000)}\n--- stratad:\n${d.logs.slice(-3000)}`).toBe('PASS');
    });
  }
});
