/**
 * A snapshotter served by another process over containerd's snapshots API (a "proxy plugin"): another
 * `stratad serve-snapshotter`, or any containerd proxy snapshotter (stargz, nydus, ...). Calls carry the
 * name the proxy is configured under, as containerd sends them; errors come back as StrataErrors.
 */
import * as grpc from '@grpc/grpc-js';
import { SnapshotsClient, type Info as PbInfo } from '../gen/containerd/services/snapshots/v1/snapshots.js';
import { toStrataError } from './strata.js';
import { NAMESPACE_HEADER } from '../headers.js';
import type { Info, SnapshotOpts, Snapshotter, Usage, WalkFn } from '../../snapshots/types.js';
import type { Mount } from '../../core/mount.js';
import { mountFromPb, snapshotInfoToPb, snapshotInfoFromPb } from '../convert.js';

type UnaryFn<Req, Res> = (req: Req, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: Res) => void) => unknown;

export class ProxySnapshotter implements Snapshotter {
  private readonly client: SnapshotsClient;

  /**
   * @param namespace sent as the containerd-namespace header: unused by proxy plugins (their keys arrive
   *   already namespaced), needed when the other end is a daemon's namespaced snapshots service.
   * @param capabilities what the other process implements, as its `[proxy_plugins.NAME] capabilities` declare
   *   (the snapshots API cannot ask): callers rely on them as on a built-in backend's.
   */
  constructor(
    readonly address: string,
    readonly name: string,
    readonly namespace?: string,
    readonly capabilities: readonly string[] = [],
  ) {
    const target = address.startsWith('unix:') ? address : `unix://${address}`;
    this.client = new SnapshotsClient(target, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 16 << 20,
    });
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.namespace) md.set(NAMESPACE_HEADER, this.namespace);
    return md;
  }

  private call<Req, Res>(fn: UnaryFn<Req, Res>, req: Req): Promise<Res> {
    return new Promise((resolve, reject) =>
      fn.call(this.client, req, this.metadata(), {}, (err, res) => (err ? reject(toStrataError(err)) : resolve(res))),
    );
  }

  async stat(key: string): Promise<Info> {
    const r = await this.call(this.client.stat, { snapshotter: this.name, key });
    return snapshotInfoFromPb(r.info!);
  }

  async update(info: Pick<Info, 'name' | 'labels'>, fieldpaths: string[] = []): Promise<Info> {
    const pb: PbInfo = snapshotInfoToPb({ ...info, kind: 'active', parent: '', created: new Date(0), updated: new Date(0) });
    const r = await this.call(this.client.update, { snapshotter: this.name, info: pb, updateMask: fieldpaths });
    return snapshotInfoFromPb(r.info!);
  }

  async usage(key: string): Promise<Usage> {
    const r = await this.call(this.client.usage, { snapshotter: this.name, key });
    return { size: r.size, inodes: r.inodes };
  }

  async mounts(key: string): Promise<Mount[]> {
    return (await this.call(this.client.mounts, { snapshotter: this.name, key })).mounts.map(mountFromPb);
  }

  async prepare(key: string, parent: string, opts: SnapshotOpts = {}): Promise<Mount[]> {
    const r = await this.call(this.client.prepare, { snapshotter: this.name, key, parent, labels: opts.labels ?? {} });
    return r.mounts.map(mountFromPb);
  }

  async view(key: string, parent: string, opts: SnapshotOpts = {}): Promise<Mount[]> {
    const r = await this.call(this.client.view, { snapshotter: this.name, key, parent, labels: opts.labels ?? {} });
    return r.mounts.map(mountFromPb);
  }

  async commit(name: string, key: string, opts: SnapshotOpts = {}): Promise<void> {
    await this.call(this.client.commit, { parent: opts.parent ?? '', snapshotter: this.name, name, key, labels: opts.labels ?? {} });
  }

  async remove(key: string): Promise<void> {
    await this.call(this.client.remove, { snapshotter: this.name, key });
  }

  async walk(fn: WalkFn, filters: string[] = []): Promise<void> {
    const stream = this.client.list({ snapshotter: this.name, filters }, this.metadata());
    try {
      for await (const batch of stream) {
        for (const i of (batch as { info: PbInfo[] }).info) await fn(snapshotInfoFromPb(i));
      }
    } catch (err) {
      throw toStrataError(err);
    }
  }

  async cleanup(): Promise<void> {
    await this.call(this.client.cleanup, { snapshotter: this.name });
  }

  async close(): Promise<void> {
    this.client.close();
  }
}
