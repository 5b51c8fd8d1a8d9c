/**
 * The stargz snapshotter: the overlayfs snapshotter (../overlay: same layout, records and semantics) plus
 * remote layers, as stargz-snapshotter does it (snapshot/snapshot.go), compatible with its labels:
 *
 *  - A Prepare labelled `containerd.io/snapshot.ref` = <chainID> with the stargz labels (`.../remote/stargz.reference`,
 *    `.../remote/stargz.digest`, optionally `.../remote/urls` and `containerd.io/snapshot/stargz/toc.digest`)
 *    prepares the active snapshot, asks lazyfs to mount the layer on its directory (footer and TOC read with
 *    Range requests, TOC digest checked), commits it as <chainID> labelled `containerd.io/snapshot/remote` =
 *    "remote snapshot", and answers ALREADY_EXISTS: the caller never downloads the layer.
 *  - When the layer cannot be mounted lazily (not eStargz, TOC unreadable or wrong, registry unreachable), the
 *    active snapshot stays an ordinary one (the caller downloads and applies the layer: the fallback), with the
 *    reason in its `containerd.io/snapshot/strata.lazy-fallback` label.
 *  - The remote layers are served by the root's lazyfs process (lazyfs.ts), which outlives this one. Before a
 *    snapshot's mounts are handed out, every remote layer of its chain is checked mounted (mounted again if the
 *    lazyfs died and a new one was started); opening the snapshotter mounts again every remote layer the running
 *    lazyfs does not serve.
 *  - Remove of a remote snapshot unmounts it and drops its chunk cache; cleanup() also unmounts what no record
 *    owns and drops caches no record owns.
 */
import { existsSync } from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { alreadyExists, failedPrecondition } from '../../core/errdefs.js';
import {
  LABEL_LAZY_FALLBACK,
  LABEL_REMOTE_SIZE,
  LABEL_REMOTE_SNAPSHOT,
  LABEL_REMOTE_URLS,
  LABEL_SNAPSHOT_REF,
  LABEL_STARGZ_DIGEST,
  LABEL_STARGZ_LAYERS,
  LABEL_STARGZ_REFERENCE,
  LABEL_STARGZ_TOC_DIGEST,
  REMOTE_SNAPSHOT_VALUE,
} from '../../core/labels.js';
import type { Mount } from '../../core/mount.js';
import { silentLogger, type Logger } from '../../log/index.js';
import { diskUsage } from '../fsutil.js';
import { openOverlaySnapshotter, type OverlayBackend } from '../overlay/index.js';
import type { Info, SnapshotOpts, Snapshotter, Usage, WalkFn } from '../types.js';
import { LazyfsClient } from './client.js';
import { detach, lazyfsMountsUnder } from './mounts.js';
import type { LayerRef, MountResult, PolicyConfig, RegistryConfig } from './protocol.js';

export { LazyfsClient } from './client.js';
export type { LayerRef, MountStatus, PolicyConfig, RegistryConfig } from './protocol.js';

export interface StargzOptions {
  /** Extra overlay mount options (as overlayfs's `mount_options`). */
  mountOptions?: string[];
  remapIds?: boolean;
  log?: Logger;
  /** Registry access of the lazyfs process. */
  registry?: RegistryConfig;
  /** Prefetch and background fetch. */
  policy?: Partial<PolicyConfig>;
  /** How to start lazyfs (tests: the entry and node binary). */
  lazyfs?: { entry?: string; node?: string; logLevel?: string; idleExitMs?: number; fetchTimeoutMs?: number };
  /**
   * When the lazyfs process starts: 'open' starts it (without waiting) when the snapshotter opens, so that it is
   * ready when the first remote layer is asked for, as containerd-stargz-grpc runs beside containerd (the
   * plugin's default); 'on-demand' (the default here) starts it the first time a remote layer is needed.
   * Either way a lazyfs already running is found again, and one is started at open when remote snapshots are
   * on record.
   */
  lazyfsStart?: 'open' | 'on-demand';
}

export const defaultPolicy = (): PolicyConfig => ({ prefetch: true, background: true, backgroundDelayMs: 5000 });

/** The layer a snapshot's labels name, or why they name none. */
export function layerOfLabels(labels: Record<string, string>): LayerRef | string {
  const ref = labels[LABEL_STARGZ_REFERENCE];
  const digest = labels[LABEL_STARGZ_DIGEST];
  if (!ref || !digest) return `the prepare carries no ${LABEL_STARGZ_REFERENCE} and ${LABEL_STARGZ_DIGEST} labels`;
  const urls = labels[LABEL_REMOTE_URLS]?.split(',').filter((u) => u !== '');
  const toc = labels[LABEL_STARGZ_TOC_DIGEST];
  const size = Number(labels[LABEL_REMOTE_SIZE]);
  return {
    ref,
    digest,
    ...(urls && urls.length > 0 ? { urls } : {}),
    ...(toc ? { tocDigest: toc } : {}),
    ...(Number.isSafeInteger(size) && size > 0 ? { size } : {}),
  };
}

const isRemote = (info: Info): boolean => info.labels[LABEL_REMOTE_SNAPSHOT] !== undefined;

class StargzSnapshotter implements Snapshotter {
  readonly capabilities: readonly string[];
  private readonly policy: PolicyConfig;

  constructor(
    private readonly root: string,
    private readonly inner: OverlayBackend,
    readonly lazyfs: LazyfsClient,
    private readonly registry: RegistryConfig,
    policy: Partial<PolicyConfig>,
    private readonly log: Logger,
  ) {
    this.capabilities = inner.capabilities ?? [];
    this.policy = { ...defaultPolicy(), ...policy };
  }

  /** The snapshot id's chunk cache: `<root>/cache/<id>`. */
  private cacheDirOf(layerDir: string): string {
    return join(this.root, 'cache', basename(dirname(layerDir)));
  }

  private mountRemote(key: string, layer: LayerRef, neighbours?: string[]): Promise<MountResult> {
    const mountpoint = this.inner.layerDir(key);
    return this.lazyfs.mount({
      mountpoint,
      cacheDir: this.cacheDirOf(mountpoint),
      layer,
      registry: this.registry,
      policy: this.policy,
      ...(neighbours && neighbours.length > 0 ? { neighbours } : {}),
    });
  }

  /** Every remote layer of the chain from `key` down mounted (again, if its lazyfs died). */
  private async ensureChain(key: string): Promise<void> {
    for (let k = key; k !== ''; ) {
      const info = await this.inner.stat(k);
      if (isRemote(info)) {
        const layer = layerOfLabels(info.labels);
        if (typeof layer === 'string') throw failedPrecondition(`remote snapshot ${k}: ${layer}`);
        await this.mountRemote(k, layer);
      }
      k = info.parent;
    }
  }

  stat(key: string): Promise<Info> {
    return this.inner.stat(key);
  }

  update(info: Pick<Info, 'name' | 'labels'>, fieldpaths?: string[]): Promise<Info> {
    return this.inner.update(info, fieldpaths);
  }

  /** A remote snapshot uses what its chunk cache holds (never a walk of the FUSE mount). */
  async usage(key: string): Promise<Usage> {
    const info = await this.inner.stat(key);
    if (!isRemote(info)) return this.inner.usage(key);
    const dir = this.cacheDirOf(this.inner.layerDir(key));
    return existsSync(dir) ? diskUsage(dir) : { size: 0, inodes: 0 };
  }

  async mounts(key: string): Promise<Mount[]> {
    const info = await this.inner.stat(key);
    if (info.parent) await this.ensureChain(info.parent);
    return this.inner.mounts(key);
  }

  async prepare(key: string, parent: string, opts?: SnapshotOpts): Promise<Mount[]> {
    const labels = opts?.labels ?? {};
    const target = labels[LABEL_SNAPSHOT_REF];
    if (!target) {
      if (parent) await this.ensureChain(parent);
      return this.inner.prepare(key, parent, opts);
    }
    // Provided already (by an earlier pull, maybe in another namespace): nothing to fetch.
    const existing = await this.inner.stat(target).catch(() => undefined);
    if (existing && existing.kind === 'committed' && existing.parent === parent && isRemote(existing)) {
      await this.ensureChain(target);
      throw alreadyExists(`target snapshot "${target}"`);
    }
    if (parent) await this.ensureChain(parent);
    const mounts = await this.inner.prepare(key, parent, opts);
    const layer = layerOfLabels(labels);
    let why: string | undefined;
    if (typeof layer === 'string') {
      why = layer;
    } else {
      try {
        // The following layers (stargz.layers, as stargz-snapshotter's client handler sets it): lazyfs reads
        // their TOCs now, in parallel with this one's.
        const next = (labels[LABEL_STARGZ_LAYERS] ?? '').split(',').filter((d) => d !== '' && d !== layer.digest);
        this.log.debug('stargz: mounting a remote layer', { target, digest: layer.digest });
        await this.mountRemote(key, layer, next);
      } catch (err) {
        why = err instanceof Error ? err.message : String(err);
      }
    }
    if (why !== undefined) {
      this.log.info('stargz: lazy pull not possible, the layer is downloaded', { target, reason: why });
      await this.inner.update({ name: key, labels: { [LABEL_LAZY_FALLBACK]: why } }, [`labels.${LABEL_LAZY_FALLBACK}`]);
      return mounts;
    }
    try {
      await this.inner.commit(target, key, { labels: { ...labels, [LABEL_REMOTE_SNAPSHOT]: REMOTE_SNAPSHOT_VALUE } });
    } catch (err) {
      await this.lazyfs.unmount(this.inner.layerDir(key), true).catch(() => undefined);
      await this.inner.remove(key).catch(() => undefined);
      throw err;
    }
    this.log.info('stargz: remote snapshot', { target, digest: (layer as LayerRef).digest });
    throw alreadyExists(`target snapshot "${target}"`);
  }

  async view(key: string, parent: string, opts?: SnapshotOpts): Promise<Mount[]> {
    if (parent) await this.ensureChain(parent);
    return this.inner.view(key, parent, opts);
  }

  commit(name: string, key: string, opts?: SnapshotOpts): Promise<void> {
    return this.inner.commit(name, key, opts);
  }

  async remove(key: string): Promise<void> {
    const info = await this.inner.stat(key);
    if (!isRemote(info)) return this.inner.remove(key);
    let child: string | undefined;
    await this.inner.walk(
      (i) => {
        if (i.parent === key) child ??= i.name;
      },
      [`parent==${JSON.stringify(key)}`],
    );
    if (child !== undefined) throw failedPrecondition(`cannot remove snapshot with child`);
    const dir = this.inner.layerDir(key);
    if (await this.lazyfs.running()) {
      await this.lazyfs.unmount(dir, true);
    } else {
      // No lazyfs (none was needed since the last start): no live mount; a dead one's is detached here.
      if (lazyfsMountsUnder(dirname(dir)).includes(dir)) await detach(dir);
      await rm(this.cacheDirOf(dir), { recursive: true, force: true });
    }
    await this.inner.remove(key);
  }

  walk(fn: WalkFn, filters?: string[]): Promise<void> {
    return this.inner.walk(fn, filters);
  }

  /** Unmounts and drops the cache of what no remote snapshot record owns, then overlay's cleanup. */
  async cleanup(): Promise<void> {
    const owned = new Set<string>();
    await this.inner.walk((i) => {
      if (isRemote(i)) owned.add(this.inner.layerDir(i.name));
    });
    if (await this.lazyfs.running()) {
      for (const m of await this.lazyfs.list()) {
        if (!owned.has(m.mountpoint)) await this.lazyfs.unmount(m.mountpoint, true);
      }
    }
    // Mounts a dead lazyfs left where no record is (overlay's cleanup must not walk into them).
    for (const mp of lazyfsMountsUnder(join(this.root, 'snapshots'))) if (!owned.has(mp)) await detach(mp);
    const ownedIds = new Set([...owned].map((d) => basename(dirname(d))));
    for (const name of await readdir(join(this.root, 'cache')).catch(() => [] as string[])) {
      if (!ownedIds.has(name)) await rm(join(this.root, 'cache', name), { recursive: true, force: true });
    }
    await this.inner.cleanup();
  }

  /** Mounts every remote layer the running lazyfs does not serve (it was started anew). */
  async restore(): Promise<number> {
    const served = new Set((await this.lazyfs.list()).map((m) => m.mountpoint));
    const missing: Info[] = [];
    await this.inner.walk((i) => {
      if (isRemote(i) && !served.has(this.inner.layerDir(i.name))) missing.push(i);
    });
    let n = 0;
    for (const i of missing) {
      const layer = layerOfLabels(i.labels);
      if (typeof layer === 'string') continue;
      try {
        await this.mountRemote(i.name, layer);
        n++;
      } catch (err) {
        this.log.warn('stargz: cannot mount a remote layer again', { snapshot: i.name, error: err });
      }
    }
    return n;
  }

  async close(): Promise<void> {
    // A lazyfs that serves nothing is not left running (it was started at open, or its last layer was removed).
    await this.lazyfs.shutdownIfIdle().catch(() => false);
    this.lazyfs.close();
    await this.inner.close();
  }
}

export type { StargzSnapshotter };

/**
 * Opens (creating if needed) a stargz snapshotter on root, finding the root's lazyfs or starting one, and
 * mounting again the remote layers a new lazyfs does not serve. It does not test that overlayfs or FUSE work
 * here: the plugin does.
 */
export async function openStargzSnapshotter(root: string, opts: StargzOptions = {}): Promise<StargzSnapshotter> {
  const log = opts.log ?? silentLogger;
  const inner = await openOverlaySnapshotter(root, {
    ...(opts.mountOptions ? { mountOptions: opts.mountOptions } : {}),
    ...(opts.remapIds !== undefined ? { remapIds: opts.remapIds } : {}),
    log,
  });
  const abs = resolve(root);
  const lazyfs = new LazyfsClient({ root: abs, log, ...opts.lazyfs });
  const sn = new StargzSnapshotter(abs, inner, lazyfs, opts.registry ?? {}, opts.policy ?? {}, log);
  // A lazyfs is started only for remote layers: none on record and none running, none started.
  let remote = false;
  await inner.walk((i) => {
    remote ||= isRemote(i);
  });
  if (!remote && opts.lazyfsStart === 'open') {
    lazyfs.warm();
    return sn;
  }
  if (!remote && !(await lazyfs.running())) return sn;
  try {
    const hello = await lazyfs.hello();
    const n = await sn.restore();
    log.info('stargz: lazyfs', { pid: hello.pid, started: lazyfs.started, remounted: n });
  } catch (err) {
    log.warn('stargz: lazyfs not reachable at start; remote layers are mounted on first use', { error: err });
  }
  return sn;
}
