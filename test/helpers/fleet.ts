/**
 * A fleet of machines on one host, for mirror tests and the fleet benchmark: a Linux bridge with a private
 * address (10.213.<x>.1/24, no physical port: nothing leaves the machine) and N network namespaces, each
 * joined to it by a veth pair (10.213.<x>.<10+i>) with its own loopback. Registries listen on the bridge
 * address; daemons run inside the namespaces (`ip netns exec`), so each one reaches the registries over its
 * own interface, as separate nodes would. Also: counting what a docker-registry served from its access log.
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface FleetNetwork {
  /** The bridge's address: registries listen here. */
  hostIp: string;
  /** Network namespace names, one per node. */
  namespaces: string[];
  /** The command prefix that runs a program in node i's namespace. */
  exec(i: number): string[];
  /** Deletes the namespaces (their veth ends go with them) and the bridge. */
  cleanup(): Promise<void>;
}

const live = new Set<FleetNetwork & { bridge: string }>();
let exitHook = false;
function installExitHook(): void {
  if (exitHook) return;
  exitHook = true;
  // Last resort (a crash before afterAll): no namespace or bridge outlives the process.
  process.once('exit', () => {
    for (const n of live) {
      for (const ns of n.namespaces) {
        try {
          execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
        } catch {
          // gone
        }
      }
      try {
        execFileSync('ip', ['link', 'del', n.bridge], { stdio: 'ignore' });
      } catch {
        // gone
      }
    }
  });
}

async function ip(...args: string[]): Promise<void> {
  await execFileP('ip', args);
}

/** Creates the bridge and `n` namespaces (see the file comment). Requires root. */
export async function createFleetNetwork(n: number): Promise<FleetNetwork> {
  const tag = randomBytes(3).toString('hex'); // interface names stay within 15 bytes
  const subnet = 100 + (randomBytes(1)[0]! % 150);
  const bridge = `sfb${tag}`;
  const hostIp = `10.213.${subnet}.1`;
  const namespaces: string[] = [];
  installExitHook();
  const net: FleetNetwork & { bridge: string } = {
    bridge,
    hostIp,
    namespaces,
    exec: (i) => ['ip', 'netns', 'exec', namespaces[i]!],
    cleanup: async () => {
      live.delete(net);
      for (const ns of namespaces) await ip('netns', 'del', ns).catch(() => undefined);
      await ip('link', 'del', bridge).catch(() => undefined);
    },
  };
  live.add(net);
  try {
    await ip('link', 'add', bridge, 'type', 'bridge');
    await ip('addr', 'add', `${hostIp}/24`, 'dev', bridge);
    await ip('link', 'set', bridge, 'up');
    for (let i = 0; i < n; i++) {
      const ns = `strata-fleet-${tag}-${i}`;
      const veth = `sfv${tag}${i}`;
      await ip('netns', 'add', ns);
      namespaces.push(ns);
      await ip('link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
      await ip('link', 'set', veth, 'master', bridge, 'up');
      await ip('netns', 'exec', ns, 'ip', 'addr', 'add', `10.213.${subnet}.${10 + i}/24`, 'dev', 'eth0');
      await ip('netns', 'exec', ns, 'ip', 'link', 'set', 'eth0', 'up');
      await ip('netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up');
    }
  } catch (err) {
    await net.cleanup();
    throw err;
  }
  return net;
}

/** Removes every fleet network this process created (afterAll). */
export async function cleanupFleetNetworks(): Promise<void> {
  for (const n of [...live]) await n.cleanup();
}

export interface ServedBlob {
  method: string;
  repository: string;
  digest: string;
  status: number;
  bytes: number;
  userAgent: string;
}

/**
 * The blob GETs a docker-registry served, from its access log (Apache combined format, one line per request:
 * `... "GET /v2/<repo>/blobs/sha256:<hex> HTTP/1.1" 200 <bytes> ...`).
 */
export function servedBlobs(log: string): ServedBlob[] {
  const out: ServedBlob[] = [];
  const re = /"(GET|HEAD) \/v2\/(\S+)\/blobs\/(sha256:[0-9a-f]{64})\S* HTTP\/[\d.]+" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"/g;
  for (const m of log.matchAll(re)) {
    out.push({ method: m[1]!, repository: m[2]!, digest: m[3]!, status: Number(m[4]), bytes: m[5] === '-' ? 0 : Number(m[5]), userAgent: m[6]! });
  }
  return out;
}
