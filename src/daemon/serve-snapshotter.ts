/**
 * A snapshotter served alone on a unix socket, as a containerd proxy plugin (`[proxy_plugins.NAME]` with
 * `type = "snapshot"`, in containerd's config or Strata's): containerd's Snapshots service over any object
 * that implements the Snapshotter interface, plus the health and version services.
 *
 * This is the one implementation of serving a snapshotter. `stratad serve-snapshotter --snapshotter ID`
 * (serve-snapshotter-plugin.ts) loads a built-in backend and serves it with serveSnapshotter(); another
 * TypeScript package serves its own object with it (`import { serveSnapshotter } from 'strata/serve-snapshotter'`,
 * docs/snapshotter-authors.md). It loads no plugin of its own.
 *
 * No namespaces here: a proxy snapshotter receives the keys the client's metadata layer made (containerd's
 * `<namespace>/<n>/<key>`, Strata's likewise), and only the labels that layer passes down (the
 * `containerd.io/snapshot/` ones and `containerd.io/snapshot.ref`).
 */
import { defaultConfig, type Config } from '../config/index.js';
import { silentLogger, type Logger } from '../log/index.js';
import type { Snapshotter } from '../snapshots/types.js';
import { snapshotsService } from '../api/services/snapshots.js';
import { healthService, versionService } from '../api/services/version.js';
import { STRATA_REVISION, STRATA_VERSION } from '../version.js';
import { prepareSocketPath } from './socket.js';
import { serveGrpc } from './serve-grpc.js';

/** How long stop() lets in-flight calls finish before cutting them. */
const SHUTDOWN_GRACE_MS = 10_000;

export type ServeGrpcOptions = Partial<Pick<Config['grpc'], 'uid' | 'gid' | 'max_recv_message_size' | 'max_send_message_size' | 'max_concurrent_streams'>>;

export interface ServeSnapshotterOptions {
  /**
   * The unix socket to listen on. Its directory is created; a stale socket left by a dead server is replaced;
   * a socket another process still answers on is an 'already exists' error.
   */
  address: string;
  /** Where the server logs (calls at debug, start and stop at info). Default: nothing is logged. */
  log?: Logger;
  /**
   * The socket's owner (default: this process's uid and gid; mode 0660) and message limits (default:
   * containerd's 16 MiB each way).
   */
  grpc?: ServeGrpcOptions;
  /**
   * What stop() does once the server has stopped. Default: `backend.close()`. The built-in path passes
   * its plugin set's close.
   */
  close?: () => Promise<void>;
}

export interface ServedSnapshotter {
  /** The socket it serves on. */
  readonly address: string;
  readonly backend: Snapshotter;
  /**
   * Stops serving (in-flight calls get up to 10 s to finish), then closes the backend (or runs `close`).
   * Calling it again returns the same promise.
   */
  stop(): Promise<void>;
}

/** Serves `backend` on the unix socket `opts.address` as a containerd proxy snapshotter. */
export async function serveSnapshotter(backend: Snapshotter, opts: ServeSnapshotterOptions): Promise<ServedSnapshotter> {
  const log = opts.log ?? silentLogger;
  const grpcDefaults = defaultConfig().grpc;
  const grpc = {
    ...grpcDefaults,
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    ...opts.grpc,
    address: opts.address,
  };
  await prepareSocketPath(opts.address);
  const server = await serveGrpc(grpc, [
    snapshotsService(() => backend, log),
    healthService(log),
    versionService(STRATA_VERSION, STRATA_REVISION, log),
  ]);
  log.info('serving', { address: opts.address });
  const close = opts.close ?? (() => backend.close());
  let stopping: Promise<void> | undefined;
  return {
    address: opts.address,
    backend,
    stop: () =>
      (stopping ??= (async () => {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, SHUTDOWN_GRACE_MS);
          server.tryShutdown(() => {
            clearTimeout(timer);
            resolve();
          });
        });
        await close();
        log.info('stopped');
      })()),
  };
}
