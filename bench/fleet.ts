/**
 * Fleet benchmark: N stratad instances on one machine, each in its own network namespace (a veth to a private
 * bridge; test/helpers/fleet.ts) with its own root and socket, pull (and unpack) the same image at once from an
 * upstream docker-registry, either directly or through a docker-registry pull-through cache (`proxy:
 * remoteurl:`) named as a mirror in the hosts.toml of their `config_path`.
 *
 *   node dist/bench/fleet.js [--nodes 2,4,8] [--layers 4] [--layer-size 16] [--json]
 *
 * For each N, three waves, each on N fresh daemons (empty roots), all pulls started together:
 *   direct        hosts.toml names only the upstream
 *   mirror cold   a fresh pull-through cache in front (nothing cached)
 *   mirror warm   the same cache again, now holding every blob
 * Measured: wall time from starting the N pulls to the last one done; blob GETs and blob bytes the upstream
 * served (its access log, including the cache's own fetches). Layers are incompressible (random bytes,
 * uncompressed tar), --layer-size MiB each. Must run as root (network namespaces, overlay mounts).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startDaemon, stopAll, type StartedDaemon } from '../test/helpers/daemon.js';
import { cleanupFleetNetworks, createFleetNetwork, servedBlobs, type FleetNetwork } from '../test/helpers/fleet.js';
import { buildOciLayout, makeLayerTar } from '../test/helpers/oci-layout.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../test/helpers/registry.js';
import { tempDir } from '../test/helpers/temp.js';
import { pullImage } from '../test/helpers/transfer.js';

const { values } = parseArgs({
  options: {
    nodes: { type: 'string', default: '2,4,8' },
    layers: { type: 'string', default: '4' },
    'layer-size': { type: 'string', default: '16' },
    json: { type: 'boolean', default: false },
  },
});
const NODES = values.nodes!.split(',').map(Number);
const LAYERS = Number(values.layers);
const LAYER_MIB = Number(values['layer-size']);
if (NODES.some((n) => !Number.isInteger(n) || n < 1) || !(LAYERS >= 1) || !(LAYER_MIB > 0)) {
  console.error('usage: node dist/bench/fleet.js [--nodes 2,4,8] [--layers 4] [--layer-size 16] [--json]');
  process.exit(2);
}
const log = (m: string) => process.stderr.write(`[fleet] ${m}\n`);

interface Row {
  nodes: number;
  mode: 'direct' | 'mirror cold' | 'mirror warm';
  wallMs: number;
  upstreamBlobGets: number;
  upstreamBlobMiB: number;
}

async function main(): Promise<void> {
  const tmp = await tempDir('strata-bench-fleet-');
  const maxN = Math.max(...NODES);
  let net: FleetNetwork | undefined;
  const rows: Row[] = [];
  try {
    net = await createFleetNetwork(maxN);
    log(`building the image: ${LAYERS} layers of ${LAYER_MIB} MiB`);
    const layers = [];
    for (let i = 0; i < LAYERS; i++) layers.push(await makeLayerTar({ [`l${i}`]: randomBytes(LAYER_MIB << 20) }));
    const image = await buildOciLayout(join(tmp.path, 'image'), { layers, refName: 'v1' });
    const upstream = await startRegistry({ bindHost: net.hostIp, accessLog: true });
    await upstream.pushOciLayout(image.dir, 'fleet/app:v1');
    const ref = `${upstream.host}/fleet/app:v1`;
    const hostsDirName = upstream.host.replace(':', '_') + '_';

    const hostsFor = async (name: string, mirror: StartedRegistry | undefined): Promise<string> => {
      const root = join(tmp.path, name);
      await mkdir(join(root, hostsDirName), { recursive: true });
      let toml = `server = "http://${upstream.host}"\n`;
      if (mirror) toml += `\n[host."http://${mirror.host}"]\n  capabilities = ["pull", "resolve"]\n`;
      await writeFile(join(root, hostsDirName, 'hosts.toml'), toml);
      return root;
    };

    const wave = async (n: number, mode: Row['mode'], hostsRoot: string): Promise<void> => {
      const daemons: StartedDaemon[] = [];
      for (let i = 0; i < n; i++) {
        daemons.push(await startDaemon({ exec: net!.exec(i), logLevel: 'info', config: `[plugins."io.containerd.transfer.v1.images"]\nconfig_path = "${hostsRoot}"\n` }));
      }
      // Warm each client connection first (not timed).
      for (const d of daemons) await d.client('bench').call(d.client('bench').version, d.client('bench').version.version, {});
      const before = servedBlobs(upstream.logs()).length;
      const t0 = performance.now();
      await Promise.all(daemons.map((d) => pullImage(d.client('bench'), ref)));
      const wallMs = performance.now() - t0;
      const gets = servedBlobs(upstream.logs()).slice(before).filter((b) => b.method === 'GET' && b.status === 200);
      const row: Row = { nodes: n, mode, wallMs, upstreamBlobGets: gets.length, upstreamBlobMiB: gets.reduce((a, b) => a + b.bytes, 0) / (1 << 20) };
      rows.push(row);
      log(`N=${n} ${mode}: ${(wallMs / 1000).toFixed(2)} s, upstream ${row.upstreamBlobGets} blob GETs, ${row.upstreamBlobMiB.toFixed(1)} MiB`);
      await stopAll();
    };

    for (const n of NODES) {
      await wave(n, 'direct', await hostsFor(`direct-${n}`, undefined));
      const mirror = await startRegistry({ bindHost: net.hostIp, accessLog: true, extraConfig: `proxy:\n  remoteurl: http://${upstream.host}\n` });
      const viaMirror = await hostsFor(`mirror-${n}`, mirror);
      await wave(n, 'mirror cold', viaMirror);
      await wave(n, 'mirror warm', viaMirror);
      await mirror.stop();
    }
  } finally {
    await stopAll();
    await stopAllRegistries();
    await cleanupFleetNetworks();
    await tmp.cleanup();
  }

  const imageMiB = LAYERS * LAYER_MIB;
  if (values.json) {
    console.log(JSON.stringify({ imageMiB, layers: LAYERS, nproc: cpus().length, rows }, null, 2));
    return;
  }
  const header = ['N', 'mode', 'wall s', 'upstream blob GETs', 'upstream MiB', 'upstream MiB / node'];
  const lines = rows.map((r) => [
    String(r.nodes),
    r.mode,
    (r.wallMs / 1000).toFixed(2),
    String(r.upstreamBlobGets),
    r.upstreamBlobMiB.toFixed(1),
    (r.upstreamBlobMiB / r.nodes).toFixed(1),
  ]);
  console.log(`image: ${LAYERS} layers + config, ${imageMiB} MiB of blobs; ${cpus().length} CPUs`);
  console.log(`| ${header.join(' | ')} |\n|${header.map(() => ' --- ').join('|')}|`);
  for (const l of lines) console.log(`| ${l.join(' | ')} |`);
}

main().catch(async (err) => {
  console.error(err);
  await stopAll().catch(() => undefined);
  await stopAllRegistries().catch(() => undefined);
  await cleanupFleetNetworks().catch(() => undefined);
  process.exit(1);
});
