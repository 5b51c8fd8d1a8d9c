/**
 * strata container (containers, c): ls, info, label, rm — ctr's `container` commands over the containers
 * API, with ctr's layout: `ls` as ctr's table, `info` as ctr's JSON (Go field names, 4-space indent, the
 * spec decoded), `rm` deletes a stopped task first and the container's snapshot unless --keep-snapshot.
 */
import type { StrataClient } from '../api/clients/strata.js';
import type { Container as PbContainer } from '../api/gen/containerd/services/containers/v1/containers.js';
import type { Any } from '../api/gen/google/protobuf/any.js';
import { Status } from '../api/gen/containerd/types/task/task.js';
import { isKind, isNotFound } from '../core/errdefs.js';
import { bool, CliError, labelArgs, type Group } from './command.js';
import { isoOrNull, printJson, printLines, table, write } from './output.js';
import { goJson } from './snapshots.js';
import { loadContainer, statusName } from './tasks.js';
import { toRFC3339Nano } from '../core/time.js';

/** Go's RFC3339Nano of a time (nanoseconds kept), as encoding/json writes a UTC time.Time. */
function goTimeOf(d: Date | undefined): string {
  if (!d) return '0001-01-01T00:00:00Z';
  return toRFC3339Nano(d);
}

/** A gogo types.Any as encoding/json writes it (type_url, value in base64, both omitempty). */
function goAny(a: Any | undefined): Record<string, string> | null {
  if (!a) return null;
  const out: Record<string, string> = {};
  if (a.typeUrl) out['type_url'] = a.typeUrl;
  if (a.value.length > 0) out['value'] = Buffer.from(a.value).toString('base64');
  return out;
}

const nullIfEmpty = <T extends object>(m: T | undefined): T | null => (m && Object.keys(m).length > 0 ? m : null);

/** `ctr container info`: containers.Container in Go's JSON, with the spec decoded when it has one. */
export function containerInfoJson(c: PbContainer): Record<string, unknown> {
  const extensions = Object.entries(c.extensions ?? {});
  const info: Record<string, unknown> = {
    ID: c.id,
    Labels: nullIfEmpty(c.labels),
    Image: c.image,
    Runtime: { Name: c.runtime?.name ?? '', Options: goAny(c.runtime?.options) },
    SnapshotKey: c.snapshotKey,
    Snapshotter: c.snapshotter,
    CreatedAt: goTimeOf(c.createdAt),
    UpdatedAt: goTimeOf(c.updatedAt),
    Extensions: extensions.length > 0 ? Object.fromEntries(extensions.map(([k, v]) => [k, goAny(v)])) : null,
  };
  if (c.spec && c.spec.value.length > 0) {
    try {
      info['Spec'] = JSON.parse(Buffer.from(c.spec.value).toString('utf8'));
    } catch (err) {
      throw new CliError(`container ${c.id}: cannot decode spec ${c.spec.typeUrl}: ${(err as Error).message}`);
    }
  } else {
    info['Spec'] = goAny(c.spec);
  }
  return info;
}

/** ctr's deleteContainer: a task must be stopped (or only created) and is deleted first. */
async function deleteContainer(c: StrataClient, id: string, keepSnapshot: boolean): Promise<void> {
  const container = await loadContainer(c, id);
  let task: { status: Status; pid: number } | undefined;
  try {
    task = (await c.call(c.tasks, c.tasks.get, { containerId: id, execId: '' })).process;
  } catch (err) {
    // No task (or no task service): nothing to stop.
    if (!isNotFound(err) && !isKind(err, 'not implemented')) throw err;
  }
  if (task) {
    if (task.status !== Status.STOPPED && task.status !== Status.CREATED) {
      throw new CliError(`cannot delete a non stopped container: {${statusName(task.status).toLowerCase()} ${task.pid}}`);
    }
    await c.call(c.tasks, c.tasks.delete, { containerId: id });
  }
  await c.call(c.containers, c.containers.delete, { id });
  if (!keepSnapshot && container.snapshotKey) {
    if (!container.snapshotter) throw new CliError('container.Snapshotter must be set to cleanup rootfs snapshot');
    try {
      await c.call(c.snapshots, c.snapshots.remove, { snapshotter: container.snapshotter, key: container.snapshotKey });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
}

export const containers: Group = {
  name: 'containers',
  aliases: ['container', 'c'],
  summary: 'manage containers',
  commands: [
    {
      name: 'ls',
      aliases: ['list'],
      usage: '[<filter>...]',
      summary: 'list containers',
      options: { quiet: { type: 'boolean', short: 'q' } },
      async run({ args, values, session }) {
        const c = await session.connect();
        const { containers: list } = await c.call(c.containers, c.containers.list, { filters: args });
        if (session.json) {
          return printJson(
            list.map((x) => ({
              id: x.id,
              image: x.image,
              runtime: x.runtime?.name ?? '',
              snapshotter: x.snapshotter,
              snapshotKey: x.snapshotKey,
              labels: x.labels,
              createdAt: isoOrNull(x.createdAt),
              updatedAt: isoOrNull(x.updatedAt),
            })),
          );
        }
        if (bool(values, 'quiet')) return printLines(list.map((x) => x.id));
        const rows = list.map((x) => [x.id, x.image || '-', x.runtime?.name ?? '']);
        await write(table([['CONTAINER', 'IMAGE', 'RUNTIME'], ...rows], { minwidth: 4, tabwidth: 8, padding: 4, terminated: true }));
      },
    },
    {
      name: 'info',
      usage: '[--spec] <container>',
      summary: "a container's record as JSON, as ctr prints it (--spec: the OCI spec only)",
      options: { spec: { type: 'boolean' } },
      async run({ args, values, session }) {
        const id = args[0];
        if (!id) throw new CliError('container id must be provided');
        const c = await session.connect();
        const info = containerInfoJson(await loadContainer(c, id));
        await write(goJson(bool(values, 'spec') ? (info['Spec'] ?? null) : info) + '\n');
      },
    },
    {
      name: 'label',
      usage: '<container> [<key>=<value>...]',
      summary: 'set and clear labels of a container ("key=" clears)',
      async run({ args, session }) {
        const [id, ...rest] = args;
        if (!id) throw new CliError('container id must be provided');
        const labels = labelArgs(rest);
        const c = await session.connect();
        if (rest.length === 0) {
          const current = await loadContainer(c, id);
          return write(`${Object.entries(current.labels).map(([k, v]) => `${k}=${v}`).sort().join(',')}\n`);
        }
        const { container } = await c.call(c.containers, c.containers.update, {
          container: {
            id,
            labels,
            image: '',
            runtime: undefined,
            spec: undefined,
            snapshotter: '',
            snapshotKey: '',
            createdAt: undefined,
            updatedAt: undefined,
            extensions: {},
          },
          updateMask: Object.keys(labels).map((k) => `labels.${k}`),
        });
        const set = Object.entries(container?.labels ?? {}).map(([k, v]) => `${k}=${v}`);
        await write(`${set.sort().join(',')}\n`);
      },
    },
    {
      name: 'rm',
      aliases: ['delete', 'del', 'remove'],
      usage: '[--keep-snapshot] <container>...',
      summary: 'delete containers (and their stopped tasks and snapshots)',
      options: { 'keep-snapshot': { type: 'boolean' } },
      async run({ args, values, session }) {
        if (args.length === 0) throw new CliError('must specify at least one container to delete');
        const c = await session.connect();
        let status = 0;
        for (const id of args) {
          try {
            await deleteContainer(c, id, bool(values, 'keep-snapshot'));
          } catch (err) {
            process.stderr.write(`strata: failed to delete container ${JSON.stringify(id)}: ${(err as Error).message}\n`);
            status = 1;
          }
        }
        return status;
      },
    },
  ],
};
