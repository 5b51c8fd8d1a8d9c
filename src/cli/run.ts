/**
 * strata run: `ctr run` for stratad. Resolves the image, reads its config for the host platform, unpacks it
 * if its top layer is not in the snapshotter yet (Strata's transfer service), prepares the container's
 * snapshot `ID` on the image's chain under a short lease (as containerd's client does), writes the container
 * record (the OCI spec of src/runtime/spec.ts, runtime io.containerd.runc.v2), creates the task with stdio
 * FIFOs made in a temp dir, starts it and copies its output to our stdout/stderr (and our stdin to it), then
 * exits with the task's exit status. --rm removes the task, the container and its snapshot afterwards; -d
 * detaches after start (the task's stdio then goes nowhere, as with ctr's --null-io).
 *
 *   strata run [--rm] [-t] [-d] [--snapshotter S] [--env K=V]... [--cwd DIR] [--label K=V]...
 *              [--uidmap C:H:S --gidmap C:H:S]... IMAGE ID [ARGS...]
 *
 * --uidmap/--gidmap (ctr run's, containerd 2.x) run the container in a user namespace with those mappings, its
 * rootfs prepared with the `containerd.io/snapshot/uidmapping` / `gidmapping` labels: the snapshotter must
 * report `remap-ids` (idmapped mounts); there is no recursive-chown fallback (containerd's `slow_chown`), so
 * without it the run is refused, as containerd refuses it when `slow_chown` is off.
 *
 * Options come before IMAGE and ID; everything after ID is the command, taken as is (`sh -c 'exit 3'`), as ctr
 * reads it (`argsAfter`).
 *
 * The task plumbing (FIFOs, copying, signal forwarding, terminal resize, wait) is shared with `strata task
 * start` and `strata task exec` (src/cli/tasks.ts).
 */
import { execFile } from 'node:child_process';
import { constants as fsConstants, openSync, closeSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { Socket } from 'node:net';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { StrataClient } from '../api/clients/strata.js';
import type { Image as PbImage } from '../api/gen/containerd/services/images/v1/images.js';
import type { Mount } from '../api/gen/containerd/types/mount.js';
import { isNotFound } from '../core/errdefs.js';
import { checkDocumentSize, type BlobReader } from '../images/blob.js';
import { requiredDescriptors } from '../images/inspect.js';
import { chainIDs, isConfigType, parseConfig, type ImageConfig } from '../images/manifest.js';
import { defaultPlatform, formatPlatform, parsePlatform } from '../images/platforms.js';
import type { Descriptor } from '../core/descriptor.js';
import { readonlyMounts, withTempMount } from '../mount/index.js';
import { buildSpec, resolveUser, specAny } from '../runtime/spec.js';
import { bool, CliError, labelArgs, str, type Command, type Values } from './command.js';
import { rfc3339 } from './output.js';
import { LABEL_GC_EXPIRE } from '../core/labels.js';
import { formatIDMappings, LABEL_SNAPSHOT_GIDMAPPING, LABEL_SNAPSHOT_UIDMAPPING, parseIDMappings, rootPair, type IDMapping } from '../core/idmap.js';

const execFileP = promisify(execFile);

export const DEFAULT_RUNTIME = 'io.containerd.runc.v2';
/** What ctr stores as the runtime options of io.containerd.runc.v2 (an empty runc Options message). */
export const RUNC_OPTIONS_TYPE_URL = 'containerd.runc.v1.Options';
/** containerd's label for the image's stop signal (WithImageStopSignal). */
export const STOP_SIGNAL_LABEL = 'io.containerd.image.config.stop-signal';
/** How long to wait for a task's output to reach EOF after it exited. */
const DRAIN_GRACE_MS = 5_000;

export const list = (values: Values, key: string): string[] => {
  const v = (values as Record<string, unknown>)[key];
  return Array.isArray(v) ? (v as string[]) : typeof v === 'string' ? [v] : [];
};

export const snapshotterOf = (values: Values): string => str(values, 'snapshotter') ?? (process.env.CONTAINERD_SNAPSHOTTER || 'overlayfs');

/** The CLI's BlobReader: a whole blob through the content API, under the daemon's cap on documents. */
export function blobReader(c: StrataClient): BlobReader {
  return async (desc) => {
    checkDocumentSize(desc.digest, desc.size);
    const chunks: Buffer[] = [];
    for await (const b of c.readBlob(desc.digest)) chunks.push(b);
    return Buffer.concat(chunks);
  };
}

/** An image record, its config for the platform and the chain ID of its top layer. */
export async function imageConfigOf(
  c: StrataClient,
  name: string,
  platform?: string,
): Promise<{ image: PbImage; config: ImageConfig; chainID: string }> {
  const { image } = await c.call(c.images, c.images.get, { name });
  if (!image?.target) throw new CliError(`image ${name} has no target`);
  const read = blobReader(c);
  const target: Descriptor = { mediaType: image.target.mediaType, digest: image.target.digest, size: image.target.size };
  const p = platform ? parsePlatform(platform) : defaultPlatform();
  const { required, complete } = await requiredDescriptors(read, target, p);
  const configDesc = required.find((d) => isConfigType(d.mediaType));
  if (!complete || !configDesc) throw new CliError(`image ${name}: no manifest for platform ${formatPlatform(p)} in the content store`);
  const config = parseConfig(await read(configDesc));
  const chainID = chainIDs(config.rootfs.diff_ids).at(-1);
  if (!chainID) throw new CliError(`image ${name} has no layers`);
  return { image, config, chainID };
}

/** Unpacks the image into the snapshotter unless its top snapshot is there already (ctr's IsUnpacked). */
async function ensureUnpacked(c: StrataClient, name: string, snapshotter: string, chainID: string, platform?: string): Promise<void> {
  try {
    await c.call(c.snapshots, c.snapshots.stat, { snapshotter, key: chainID });
    return;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  await c.collect(c.transfer.unpack({ image: name, snapshotter, platforms: platform ? [platform] : [] }, c.metadata()));
}


/** Whether a USER value needs the rootfs's /etc/passwd or /etc/group ("uid:gid" alone does not). */
const needsRootfsFiles = (user: string): boolean => user !== '' && !/^\d+:\d+$/.test(user);

/** The rootfs's /etc/passwd and /etc/group, read through a temporary read-only mount (needs root, as ctr). */
async function rootfsUserFiles(mounts: Mount[]): Promise<{ passwd?: string; group?: string }> {
  return withTempMount(readonlyMounts(mounts), async (root) => ({
    passwd: await readFile(join(root, 'etc/passwd'), 'utf8').catch(() => undefined),
    group: await readFile(join(root, 'etc/group'), 'utf8').catch(() => undefined),
  }));
}

// ---- task I/O ----

/** The stdio of one task process: FIFO paths for the daemon, and the copying on our side. */
export interface TaskIO {
  stdin: string;
  stdout: string;
  stderr: string;
  /** Starts copying our stdin into the task; `onEnd` runs when our stdin ended (to close the task's). */
  attachStdin(onEnd: () => void): void;
  /** Resolves once stdout and stderr reached EOF, or after `graceMs`. */
  drained(graceMs: number): Promise<void>;
  close(): Promise<void>;
}

export const NULL_IO: TaskIO = {
  stdin: '',
  stdout: '',
  stderr: '',
  attachStdin: () => undefined,
  drained: async () => undefined,
  close: async () => undefined,
};

/**
 * FIFOs in a fresh temp dir (cio.NewFIFOSetInDir): `<id>-stdin`, `<id>-stdout` and, without a terminal,
 * `<id>-stderr`. Our read ends are open (non-blocking) before the task is created, so the daemon's opens for
 * writing never wait; our write end of stdin is opened read-write so that it does not wait for the daemon.
 */
export async function openFifoIO(id: string, terminal: boolean): Promise<TaskIO> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-fifo-'));
  const paths = {
    stdin: join(dir, `${id}-stdin`),
    stdout: join(dir, `${id}-stdout`),
    stderr: terminal ? '' : join(dir, `${id}-stderr`),
  };
  const sockets: Socket[] = [];
  /** A FIFO end as a non-blocking stream (what Node does for its own stdio when it is a pipe). */
  const socketOf = (path: string, flags: number, readable: boolean): Socket => {
    const fd = openSync(path, flags | fsConstants.O_NONBLOCK);
    let s: Socket;
    try {
      s = new Socket({ fd, readable, writable: !readable });
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    sockets.push(s);
    s.on('error', () => undefined);
    return s;
  };
  try {
    await execFileP('mkfifo', ['-m', '0600', ...[paths.stdin, paths.stdout, paths.stderr].filter(Boolean)]);
    const reader = (path: string, to: NodeJS.WritableStream): Promise<void> => {
      const s = socketOf(path, fsConstants.O_RDONLY, true);
      s.pipe(to, { end: false });
      return new Promise((resolve) => s.once('close', () => resolve()));
    };
    const outputs = [reader(paths.stdout, process.stdout), ...(paths.stderr ? [reader(paths.stderr, process.stderr)] : [])];
    // Read-write, so the open does not wait for the daemon's reader (and never fails with ENXIO).
    const stdinSock = socketOf(paths.stdin, fsConstants.O_RDWR, false);
    let attached = false;
    const onData = (b: Buffer) => {
      if (!stdinSock.write(b)) {
        process.stdin.pause();
        stdinSock.once('drain', () => process.stdin.resume());
      }
    };
    return {
      ...paths,
      attachStdin(onEnd) {
        if (attached) return;
        attached = true;
        process.stdin.on('data', onData);
        process.stdin.once('end', () => {
          stdinSock.end();
          onEnd();
        });
        process.stdin.on('error', () => undefined);
      },
      async drained(graceMs) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([Promise.all(outputs), new Promise<void>((r) => (timer = setTimeout(r, graceMs)))]);
        clearTimeout(timer);
      },
      async close() {
        if (attached) {
          process.stdin.off('data', onData);
          process.stdin.pause();
          process.stdin.destroy();
        }
        for (const s of sockets) {
          s.unpipe();
          s.destroy();
        }
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    for (const s of sockets) s.destroy();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Signals forwarded to the task while we wait for it (ctr's ForwardAllSignals, minus the job-control ones). */
const FORWARDED: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];

export interface AttachedRun {
  containerId: string;
  /** '' for the task's init process. */
  execId: string;
  io: TaskIO;
  terminal: boolean;
  /** Starts the process (Start). */
  start(): Promise<void>;
}

/**
 * Waits for a created process the way ctr does: Wait is called before Start so the exit cannot be missed;
 * then stdin is attached (its end closes the task's stdin with CloseIO), signals are forwarded (or the
 * terminal is put in raw mode and resized), and the exit status is returned once the output has drained.
 */
export async function startAndWait(c: StrataClient, r: AttachedRun): Promise<number> {
  const waiting = c.call(c.tasks, c.tasks.wait, { containerId: r.containerId, execId: r.execId });
  waiting.catch(() => undefined);
  const tty = r.terminal && process.stdin.isTTY === true;
  const handlers = new Map<NodeJS.Signals, () => void>();
  const resize = () => {
    if (!process.stdout.isTTY) return;
    c.call(c.tasks, c.tasks.resizePty, {
      containerId: r.containerId,
      execId: r.execId,
      width: process.stdout.columns ?? 80,
      height: process.stdout.rows ?? 24,
    }).catch(() => undefined);
  };
  try {
    await r.start();
    r.io.attachStdin(() => {
      c.call(c.tasks, c.tasks.closeIo, { containerId: r.containerId, execId: r.execId, stdin: true }).catch(() => undefined);
    });
    if (r.terminal) {
      if (tty) process.stdin.setRawMode(true);
      resize();
      process.stdout.on('resize', resize);
    } else {
      for (const sig of FORWARDED) {
        const h = () => {
          c.call(c.tasks, c.tasks.kill, {
            containerId: r.containerId,
            execId: r.execId,
            signal: osConstants.signals[sig],
            all: false,
          }).catch(() => undefined);
        };
        handlers.set(sig, h);
        process.on(sig, h);
      }
    }
    const { exitStatus } = await waiting;
    await r.io.drained(DRAIN_GRACE_MS);
    return exitStatus;
  } finally {
    for (const [sig, h] of handlers) process.off(sig, h);
    process.stdout.off('resize', resize);
    if (tty) process.stdin.setRawMode(false);
  }
}

/** Removes a snapshot, ignoring "not found". */
async function removeSnapshot(c: StrataClient, snapshotter: string, key: string): Promise<void> {
  try {
    await c.call(c.snapshots, c.snapshots.remove, { snapshotter, key });
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
}

/** Deletes a task, ignoring "not found". */
export async function deleteTask(c: StrataClient, containerId: string): Promise<void> {
  try {
    await c.call(c.tasks, c.tasks.delete, { containerId });
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
}

/** The rootfs mounts of a container's snapshot (what the client hands to task Create, as containerd's). */
export async function containerMounts(c: StrataClient, snapshotter: string, key: string): Promise<Mount[]> {
  if (!key) return [];
  return (await c.call(c.snapshots, c.snapshots.mounts, { snapshotter, key })).mounts;
}

export const run: Command = {
  name: 'run',
  usage: '<image> <id> [<arg>...]',
  argsAfter: 2,
  summary: 'run a container from an image (ctr run)',
  options: {
    rm: { type: 'boolean' },
    tty: { type: 'boolean', short: 't' },
    detach: { type: 'boolean', short: 'd' },
    'null-io': { type: 'boolean' },
    snapshotter: { type: 'string' },
    env: { type: 'string', multiple: true },
    cwd: { type: 'string' },
    user: { type: 'string', short: 'u' },
    hostname: { type: 'string' },
    label: { type: 'string', multiple: true },
    runtime: { type: 'string' },
    platform: { type: 'string' },
    'read-only': { type: 'boolean' },
    uidmap: { type: 'string', multiple: true },
    gidmap: { type: 'string', multiple: true },
  },
  async run({ args, values, session }) {
    const [ref, id, ...cmd] = args;
    if (!ref) throw new CliError('image ref must be provided');
    if (!id) throw new CliError('container id must be provided');
    const rmAfter = bool(values, 'rm');
    const detach = bool(values, 'detach');
    const terminal = bool(values, 'tty');
    const nullIO = bool(values, 'null-io');
    if (rmAfter && detach) throw new CliError('flags --detach and --rm cannot be specified together');
    if (terminal && nullIO) throw new CliError('tty and null-io cannot be used together');
    const snapshotter = snapshotterOf(values);
    const platform = str(values, 'platform');
    const runtime = str(values, 'runtime') ?? DEFAULT_RUNTIME;
    const idmap = idMappingsOf(values);
    const c = await session.connect();
    const namespace = session.globals.namespace;
    if (idmap) await requireRemapIds(c, snapshotter);

    const { image, config, chainID } = await imageConfigOf(c, ref, platform);
    await ensureUnpacked(c, image.name, snapshotter, chainID, platform);

    // As containerd's client: the snapshot is prepared under a lease that expires, so that a failure between
    // here and the container record leaves nothing behind for long; the record then keeps the snapshot.
    const { lease } = await c.call(c.leases, c.leases.create, {
      id: '',
      labels: { [LABEL_GC_EXPIRE]: rfc3339(new Date(Date.now() + 24 * 3600_000)) },
    });
    const leased = c.with({ lease: lease!.id });
    let mounts: Mount[];
    let created = false;
    try {
      try {
        const labels: Record<string, string> = idmap ? { [LABEL_SNAPSHOT_UIDMAPPING]: formatIDMappings(idmap.uid), [LABEL_SNAPSHOT_GIDMAPPING]: formatIDMappings(idmap.gid) } : {};
        mounts = (await leased.call(leased.snapshots, leased.snapshots.prepare, { snapshotter, key: id, parent: chainID, labels })).mounts;
      } finally {
        leased.close();
      }
      try {
        const user = str(values, 'user') ?? config.config?.User ?? '';
        const files = needsRootfsFiles(user) ? await rootfsUserFiles(mounts) : {};
        // Fail early with the resolver's wording if the user cannot be resolved.
        resolveUser(user, files);
        const spec = buildSpec({
          id,
          namespace,
          imageConfig: config,
          args: cmd,
          env: list(values, 'env'),
          terminal,
          cwd: str(values, 'cwd'),
          hostname: str(values, 'hostname'),
          user,
          ...files,
          annotations: labelArgs(list(values, 'label')),
          readonlyRootfs: bool(values, 'read-only'),
          ...(idmap ? { uidMappings: idmap.uid, gidMappings: idmap.gid } : {}),
        });
        const labels = {
          ...(config.config?.Labels ?? {}),
          [STOP_SIGNAL_LABEL]: config.config?.StopSignal || 'SIGTERM',
          ...labelArgs(list(values, 'label')),
        };
        await c.call(c.containers, c.containers.create, {
          container: {
            id,
            labels,
            image: image.name,
            runtime: { name: runtime, options: runtime === DEFAULT_RUNTIME ? { typeUrl: RUNC_OPTIONS_TYPE_URL, value: Buffer.alloc(0) } : undefined },
            spec: specAny(spec),
            snapshotter,
            snapshotKey: id,
            createdAt: undefined,
            updatedAt: undefined,
            extensions: {},
          },
        });
        created = true;
      } catch (err) {
        await removeSnapshot(c, snapshotter, id).catch(() => undefined);
        throw err;
      }
    } finally {
      await c.call(c.leases, c.leases.delete, { id: lease!.id, sync: false }).catch(() => undefined);
    }

    let status = 0;
    try {
      status = await runTaskOf(c, { containerId: id, rootfs: mounts, terminal, detach, nullIO });
    } finally {
      if (rmAfter && created) {
        await deleteTask(c, id).catch(() => undefined);
        await c.call(c.containers, c.containers.delete, { id });
        await removeSnapshot(c, snapshotter, id);
      }
    }
    return status;
  },
};

/** --uidmap / --gidmap ("containerID:hostID:size", each repeatable), or undefined when neither is given. */
function idMappingsOf(values: Values): { uid: IDMapping[]; gid: IDMapping[] } | undefined {
  const uidArgs = list(values, 'uidmap');
  const gidArgs = list(values, 'gidmap');
  if (uidArgs.length === 0 && gidArgs.length === 0) return undefined;
  if (uidArgs.length === 0 || gidArgs.length === 0) throw new CliError('--uidmap and --gidmap must be given together');
  const parse = (flag: string, args: string[]) => {
    try {
      return args.flatMap((a) => parseIDMappings(a));
    } catch (err) {
      throw new CliError(`--${flag}: ${err instanceof Error ? err.message : String(err)}`);
    }
  };
  const out = { uid: parse('uidmap', uidArgs), gid: parse('gidmap', gidArgs) };
  try {
    rootPair(formatIDMappings(out.uid), formatIDMappings(out.gid));
  } catch {
    throw new CliError('container UID/GID mapping entries of 0 are required but not found');
  }
  return out;
}

/**
 * containerd 2.x's client (resolveSnapshotOptions): a snapshotter that reports `remap-ids` remaps by itself; one
 * that reports `only-remap-ids` without it cannot here. Strata has no recursive-chown fallback for the rest.
 */
async function requireRemapIds(c: StrataClient, snapshotter: string): Promise<void> {
  const { plugins } = await c.call(c.introspection, c.introspection.plugins, { filters: [`type==io.containerd.snapshotter.v1,id==${snapshotter}`] });
  const caps = plugins[0]?.capabilities ?? [];
  if (caps.includes('remap-ids')) return;
  if (caps.includes('only-remap-ids')) {
    // containerd's words, less its advice: Strata has no `slow_chown` to configure.
    throw new CliError(`snapshotter "${snapshotter}" doesn't support idmap mounts on this host (no slow_chown fallback)`);
  }
  throw new CliError(`snapshotter "${snapshotter}" does not report remap-ids, and Strata has no recursive-chown fallback`);
}

/**
 * Creates a container's task with our stdio (or none when detached / null I/O), starts it and, unless
 * detached, waits for it and deletes it (as `ctr run` and `ctr task start` do). Returns the exit status.
 */
export async function runTaskOf(
  c: StrataClient,
  o: { containerId: string; rootfs: Mount[]; terminal: boolean; detach: boolean; nullIO: boolean },
): Promise<number> {
  const io = o.detach || o.nullIO ? NULL_IO : await openFifoIO(o.containerId, o.terminal);
  try {
    await c.call(c.tasks, c.tasks.create, {
      containerId: o.containerId,
      rootfs: o.rootfs,
      stdin: io.stdin,
      stdout: io.stdout,
      stderr: io.stderr,
      terminal: o.terminal,
      checkpoint: undefined,
      options: undefined,
      runtimePath: '',
    });
    const start = async () => {
      await c.call(c.tasks, c.tasks.start, { containerId: o.containerId, execId: '' });
    };
    if (o.detach) {
      try {
        await start();
      } catch (err) {
        await deleteTask(c, o.containerId).catch(() => undefined);
        throw err;
      }
      return 0;
    }
    try {
      return await startAndWait(c, { containerId: o.containerId, execId: '', io, terminal: o.terminal, start });
    } finally {
      await deleteTask(c, o.containerId);
    }
  } finally {
    await io.close();
  }
}
