/**
 * strata snapshots (snapshot): ls, tree, info, usage, mounts, prepare, view, commit, rm, label.
 *
 * Every command takes --snapshotter NAME; without it $CONTAINERD_SNAPSHOTTER, then "overlayfs", as ctr (whose
 * `snapshots` commands do not look at the namespace's "containerd.io/defaults/snapshotter" label either).
 * Tables, the tree, mount command lines and `info` are laid out as ctr lays them out.
 */
import { BinaryReader } from '@bufbuild/protobuf/wire';
import { toStrataError, type StrataClient } from '../api/clients/strata.js';
import {
  Kind,
  SnapshotsService,
  type Info,
  type StatSnapshotRequest,
  type StatSnapshotResponse,
} from '../api/gen/containerd/services/snapshots/v1/snapshots.js';
import { Timestamp } from '../api/gen/google/protobuf/timestamp.js';
import type { Mount } from '../api/gen/containerd/types/mount.js';
import { bool, CliError, labelArgs, str, type Command, type Group, type Invocation, type OptionsConfig } from './command.js';
import { formatLabels, isoOrNull, printJson, printLines, table, write } from './output.js';
import { LABEL_GC_ROOT } from '../core/labels.js';
import { subMsOf } from '../core/time.js';

export const DEFAULT_SNAPSHOTTER = 'overlayfs';
/** The label ctr puts on the snapshots it prepares and commits so that GC keeps them. */

const SNAPSHOTTER_OPTION = { snapshotter: { type: 'string' } } satisfies OptionsConfig;

/** ctr's names of the kinds (snapshots.Kind.String()). */
export function kindName(k: Kind): string {
  switch (k) {
    case Kind.VIEW:
      return 'View';
    case Kind.ACTIVE:
      return 'Active';
    case Kind.COMMITTED:
      return 'Committed';
    default:
      return 'Unknown';
  }
}

const kindJson = (k: Kind): string => kindName(k).toLowerCase();

/**
 * ctr's snapshot sizes (pkg/progress Bytes: go-units CustomSize with "%02.1f %s", base 1024): "0.0 B",
 * "4.0 KiB", "1.5 MiB". Go rounds a value exactly halfway between two tenths to the even one.
 */
export function ctrBytes(size: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB', 'ZiB', 'YiB'];
  let i = 0;
  while (size >= 1024 && i < units.length - 1) {
    size /= 1024;
    i++;
  }
  // A tie (x.25, x.75: exact in binary) goes to the even tenth, as Go's %f; toFixed rounds it up.
  const q = size * 4;
  const s = Number.isInteger(q) && q % 2 === 1 ? (2 * Math.round((size * 10) / 2) / 10).toFixed(1) : size.toFixed(1);
  return `${s} ${units[i]}`;
}

/**
 * Go's time.RFC3339Nano of a UTC protobuf timestamp, as encoding/json writes a time.Time
 * ("...05.438524689Z", "...05.12Z", "...05Z"); no timestamp is Go's zero time.
 */
export function goTime(ts: Timestamp | undefined): string {
  if (!ts) return '0001-01-01T00:00:00Z';
  const base = new Date(ts.seconds * 1000).toISOString().replace(/\.\d+Z$/, '');
  const frac = String(ts.nanos).padStart(9, '0').replace(/0+$/, '');
  return `${base}${frac ? `.${frac}` : ''}Z`;
}

const timestampOf = (d: Date | undefined): Timestamp | undefined =>
  d ? { seconds: Math.floor(d.getTime() / 1000), nanos: (((d.getTime() % 1000) + 1000) % 1000) * 1e6 + subMsOf(d) } : undefined;

/** Go's json.MarshalIndent(x, "", "    "): four-space indent and HTML-safe escapes. */
export function goJson(value: unknown): string {
  return JSON.stringify(value, null, 4).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * A snapshot's info as ctr's `snapshot info` prints it (snapshots.Info marshalled by Go), with the times
 * from `times` when given (full nanoseconds; Info's Dates hold milliseconds only).
 */
export function ctrInfo(i: Info, times: RawTimes = {}): Record<string, unknown> {
  const labels = Object.keys(i.labels).sort();
  return {
    Kind: kindName(i.kind),
    Name: i.name,
    ...(i.parent ? { Parent: i.parent } : {}),
    ...(labels.length > 0 ? { Labels: Object.fromEntries(labels.map((k) => [k, i.labels[k]])) } : {}),
    Created: goTime(times.created ?? timestampOf(i.createdAt)),
    Updated: goTime(times.updated ?? timestampOf(i.updatedAt)),
  };
}

const infoJson = (i: Info) => ({
  name: i.name,
  parent: i.parent,
  kind: kindJson(i.kind),
  labels: i.labels,
  createdAt: isoOrNull(i.createdAt),
  updatedAt: isoOrNull(i.updatedAt),
});

const mountJson = (m: Mount) => ({ type: m.type, source: m.source, options: m.options });

/** Mounts as ctr's --mounts prints them (mount.Mount marshalled by Go; no options is null). */
const ctrMounts = (ms: Mount[]) =>
  goJson(ms.map((m) => ({ Type: m.type, Source: m.source, Options: m.options.length > 0 ? m.options : null })));

/** One `mount` command line per mount, exactly as ctr prints them. */
export function mountCommands(target: string, mounts: Mount[]): string[] {
  return mounts.map((m) => `mount -t ${m.type} ${m.source} ${target} -o ${m.options.join(',')}`);
}

// ---- the tree, built as ctr builds it ----

export interface TreeNode {
  info: Info;
  /** False for a parent that the listing named but did not contain. */
  listed: boolean;
  children: string[];
}

/**
 * Nodes in the order the listing first mentions them (a parent seen before itself gets a placeholder), each
 * with its children in listing order. Roots are the nodes without a parent, placeholders included.
 */
export function buildTree(infos: Info[]): { nodes: TreeNode[]; index: Map<string, TreeNode> } {
  const nodes: TreeNode[] = [];
  const index = new Map<string, TreeNode>();
  const add = (info: Info, listed: boolean): TreeNode => {
    let node = index.get(info.name);
    if (!node) {
      node = { info, listed, children: [] };
      nodes.push(node);
      index.set(info.name, node);
    } else {
      node.info = info;
      node.listed = listed;
    }
    if (info.parent !== '') {
      const parent =
        index.get(info.parent) ??
        add({ name: info.parent, parent: '', kind: Kind.UNKNOWN, labels: {}, createdAt: undefined, updatedAt: undefined }, false);
      parent.children.push(info.name);
    }
    return node;
  };
  for (const i of infos) add(i, true);
  return { nodes, index };
}

/** The tree as ctr draws it: " root", then two spaces per level and "\_ " before each descendant. */
export function drawTree(infos: Info[], suffix: (n: TreeNode) => string = () => ''): string[] {
  const { nodes, index } = buildTree(infos);
  const lines: string[] = [];
  const seen = new Set<string>();
  const draw = (name: string, level: number): void => {
    const node = index.get(name)!;
    if (seen.has(name)) return; // a cycle in a broken listing; ctr would recurse forever
    seen.add(name);
    lines.push(`${'  '.repeat(level)}${level > 0 ? '\\_' : ''} ${node.info.name}${suffix(node)}`);
    for (const child of node.children) draw(child, level + 1);
  };
  for (const n of nodes) if (n.info.parent === '') draw(n.info.name, 0);
  return lines;
}

// ---- helpers ----

/** The snapshotter a command uses: --snapshotter, else $CONTAINERD_SNAPSHOTTER, else overlayfs. */
export const snapshotterOf = (values: Invocation['values'], env: NodeJS.ProcessEnv = process.env): string =>
  str(values, 'snapshotter') || env.CONTAINERD_SNAPSHOTTER || DEFAULT_SNAPSHOTTER;

interface Ctx {
  c: StrataClient;
  snapshotter: string;
}

async function open(inv: Invocation): Promise<Ctx> {
  return { c: await inv.session.connect(), snapshotter: snapshotterOf(inv.values) };
}

async function list({ c, snapshotter }: Ctx, filters: string[] = []): Promise<Info[]> {
  return (await c.collect(c.snapshots.list({ snapshotter, filters }, c.metadata()))).flatMap((r) => r.info);
}

export interface RawTimes {
  created?: Timestamp;
  updated?: Timestamp;
}

/** The created_at (4) and updated_at (5) timestamps of the Info (1) in an encoded StatSnapshotResponse. */
export function rawTimes(buf: Uint8Array): RawTimes {
  const out: RawTimes = {};
  const r = new BinaryReader(buf);
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag !== ((1 << 3) | 2)) {
      r.skip(tag & 7);
      continue;
    }
    const end = r.uint32() + r.pos;
    while (r.pos < end) {
      const t = r.uint32();
      if (t === ((4 << 3) | 2)) out.created = Timestamp.decode(r, r.uint32());
      else if (t === ((5 << 3) | 2)) out.updated = Timestamp.decode(r, r.uint32());
      else r.skip(t & 7);
    }
  }
  return out;
}

/** Stat, keeping the timestamps' nanoseconds beside the decoded info. */
function statRaw({ c, snapshotter }: Ctx, key: string): Promise<{ res: StatSnapshotResponse; times: RawTimes }> {
  const m = SnapshotsService.stat;
  return new Promise((resolve, reject) => {
    c.snapshots.makeUnaryRequest(
      m.path,
      m.requestSerialize,
      (b: Buffer) => ({ res: m.responseDeserialize(b), times: rawTimes(b) }),
      { snapshotter, key } satisfies StatSnapshotRequest,
      c.metadata(),
      {},
      (err, res) => (err ? reject(toStrataError(err)) : resolve(res!)),
    );
  });
}

const usageOf = ({ c, snapshotter }: Ctx, key: string) => c.call(c.snapshots, c.snapshots.usage, { snapshotter, key });

/** Go's time.RFC3339 in UTC, as ctr stamps its gc.root labels. */
const gcRootNow = (): string => new Date().toISOString().replace(/\.\d+Z$/, 'Z');

function keyAndParent(args: string[], what: string): [string, string] {
  if (args.length < 1 || args.length > 2) throw new CliError(`${what} takes <key> [<parent>]`);
  return [args[0]!, args[1] ?? ''];
}

/** prepare and view: print mount commands for --target, ctr's JSON for --mounts, strata's JSON for --json. */
async function printCreated(inv: Invocation, mounts: Mount[]): Promise<void> {
  const target = str(inv.values, 'target');
  if (inv.session.json) return printJson(mounts.map(mountJson));
  if (target) await printLines(mountCommands(target, mounts));
  if (bool(inv.values, 'mounts')) await write(ctrMounts(mounts) + '\n');
}

const CREATE_OPTIONS = {
  ...SNAPSHOTTER_OPTION,
  target: { type: 'string', short: 't' },
  mounts: { type: 'boolean' },
} satisfies OptionsConfig;

const commands: Command[] = [
  {
    name: 'ls',
    aliases: ['list'],
    usage: '[<filter>...]',
    summary: 'list snapshots (KEY PARENT KIND)',
    options: SNAPSHOTTER_OPTION,
    async run(inv) {
      const infos = await list(await open(inv), inv.args);
      if (inv.session.json) return printJson(infos.map(infoJson));
      const rows = infos.map((i) => [i.name, i.parent, kindName(i.kind)]);
      await write(table([['KEY', 'PARENT', 'KIND'], ...rows], { terminated: true }));
    },
  },
  {
    name: 'tree',
    usage: '[--usage]',
    summary: 'display the snapshots as a tree of parents and children (--usage: with each one\'s size and inodes)',
    options: { ...SNAPSHOTTER_OPTION, usage: { type: 'boolean', short: 'u' } },
    async run(inv) {
      const ctx = await open(inv);
      const infos = await list(ctx);
      const withUsage = bool(inv.values, 'usage');
      const usage = new Map<string, { size: number; inodes: number }>();
      if (withUsage) for (const i of infos) usage.set(i.name, await usageOf(ctx, i.name));
      if (inv.session.json) {
        const { nodes, index } = buildTree(infos);
        const toJson = (n: TreeNode, seen: Set<string>): Record<string, unknown> => {
          const u = usage.get(n.info.name);
          const children = n.children.filter((c) => !seen.has(c));
          const next = new Set([...seen, ...children]);
          return {
            name: n.info.name,
            kind: n.listed ? kindJson(n.info.kind) : null,
            ...(withUsage ? { usage: u ? { size: u.size, inodes: u.inodes } : null } : {}),
            children: children.map((c) => toJson(index.get(c)!, next)),
          };
        };
        return printJson(nodes.filter((n) => n.info.parent === '').map((n) => toJson(n, new Set([n.info.name]))));
      }
      const suffix = (n: TreeNode): string => {
        const u = usage.get(n.info.name);
        return withUsage && u ? ` (${ctrBytes(u.size)}, ${u.inodes} inode${u.inodes === 1 ? '' : 's'})` : '';
      };
      await printLines(drawTree(infos, suffix));
    },
  },
  {
    name: 'info',
    usage: '<key>',
    summary: 'print the info of a snapshot as JSON (as ctr does; --json: as the other strata listings)',
    options: SNAPSHOTTER_OPTION,
    async run(inv) {
      if (inv.args.length !== 1) throw new CliError('info takes exactly one <key>');
      const { res, times } = await statRaw(await open(inv), inv.args[0]!);
      if (!res.info) throw new CliError(`no info for snapshot ${inv.args[0]}`);
      if (inv.session.json) return printJson(infoJson(res.info));
      await write(goJson(ctrInfo(res.info, times)) + '\n');
    },
  },
  {
    name: 'usage',
    usage: '[-b] [<key>...]',
    summary: 'show the disk usage of snapshots (all of them without keys; -b: sizes in bytes)',
    options: { ...SNAPSHOTTER_OPTION, b: { type: 'boolean', short: 'b' } },
    async run(inv) {
      const ctx = await open(inv);
      const keys = inv.args.length > 0 ? inv.args : (await list(ctx)).map((i) => i.name);
      const rows: { key: string; size: number; inodes: number }[] = [];
      for (const key of keys) {
        const u = await usageOf(ctx, key);
        rows.push({ key, size: u.size, inodes: u.inodes });
      }
      if (inv.session.json) return printJson(rows);
      const size = bool(inv.values, 'b') ? (n: number) => String(n) : ctrBytes;
      const cells = rows.map((r) => [r.key, size(r.size), String(r.inodes)]);
      await write(table([['KEY', 'SIZE', 'INODES'], ...cells], { terminated: true }));
    },
  },
  {
    name: 'mounts',
    aliases: ['m', 'mount'],
    usage: '<target> <key>',
    summary: 'print the mount commands that mount a snapshot at <target>',
    options: SNAPSHOTTER_OPTION,
    async run(inv) {
      if (inv.args.length !== 2) throw new CliError('mounts takes <target> <key>');
      const [target, key] = inv.args as [string, string];
      const { c, snapshotter } = await open(inv);
      const { mounts } = await c.call(c.snapshots, c.snapshots.mounts, { snapshotter, key });
      if (inv.session.json) return printJson(mounts.map(mountJson));
      await printLines(mountCommands(target, mounts));
    },
  },
  {
    name: 'prepare',
    usage: '[--target <dir>] [--mounts] <key> [<parent>]',
    summary: 'create an active snapshot (on a committed parent); --target prints the mount commands for <dir>',
    options: CREATE_OPTIONS,
    async run(inv) {
      const [key, parent] = keyAndParent(inv.args, 'prepare');
      const { c, snapshotter } = await open(inv);
      const labels = { [LABEL_GC_ROOT]: gcRootNow() };
      const { mounts } = await c.call(c.snapshots, c.snapshots.prepare, { snapshotter, key, parent, labels });
      await printCreated(inv, mounts);
    },
  },
  {
    name: 'view',
    usage: '[--target <dir>] [--mounts] <key> [<parent>]',
    summary: 'create a read-only snapshot of a committed one; --target prints the mount commands for <dir>',
    options: CREATE_OPTIONS,
    async run(inv) {
      const [key, parent] = keyAndParent(inv.args, 'view');
      const { c, snapshotter } = await open(inv);
      const { mounts } = await c.call(c.snapshots, c.snapshots.view, { snapshotter, key, parent, labels: {} });
      await printCreated(inv, mounts);
    },
  },
  {
    name: 'commit',
    usage: '<name> <key>',
    summary: 'commit the active snapshot <key> as <name>',
    options: SNAPSHOTTER_OPTION,
    async run(inv) {
      if (inv.args.length !== 2) throw new CliError('commit takes <name> <key>');
      const [name, key] = inv.args as [string, string];
      const { c, snapshotter } = await open(inv);
      await c.call(c.snapshots, c.snapshots.commit, { parent: '', snapshotter, name, key, labels: { [LABEL_GC_ROOT]: gcRootNow() } });
    },
  },
  {
    name: 'rm',
    aliases: ['delete', 'del', 'remove'],
    usage: '<key>...',
    summary: 'remove snapshots, in the order given (stops at the first failure, as ctr)',
    options: SNAPSHOTTER_OPTION,
    async run(inv) {
      if (inv.args.length === 0) throw new CliError('please specify a snapshot key');
      const { c, snapshotter } = await open(inv);
      for (const key of inv.args) {
        try {
          await c.call(c.snapshots, c.snapshots.remove, { snapshotter, key });
        } catch (err) {
          throw new CliError(`failed to remove ${JSON.stringify(key)}: ${(err as Error).message}`);
        }
      }
    },
  },
  {
    name: 'label',
    usage: '<key> [<label>=<value>...]',
    summary: 'set and clear labels of a snapshot (an empty value clears the label); prints the labels',
    options: SNAPSHOTTER_OPTION,
    async run(inv) {
      const [key, ...rest] = inv.args;
      if (!key) throw new CliError('please specify a snapshot key');
      const labels = labelArgs(rest);
      const keys = Object.keys(labels);
      const { c, snapshotter } = await open(inv);
      let info: Info | undefined;
      if (keys.length === 0) {
        ({ info } = await c.call(c.snapshots, c.snapshots.stat, { snapshotter, key }));
      } else {
        const set = Object.fromEntries(Object.entries(labels).filter(([, v]) => v !== ''));
        ({ info } = await c.call(c.snapshots, c.snapshots.update, {
          snapshotter,
          info: { name: key, parent: '', kind: Kind.UNKNOWN, labels: set, createdAt: undefined, updatedAt: undefined },
          updateMask: keys.map((k) => `labels.${k}`),
        }));
      }
      if (inv.session.json) return printJson(info?.labels ?? {});
      await write(`${formatLabels(info?.labels)}\n`);
    },
  },
];

export const snapshots: Group = {
  name: 'snapshots',
  aliases: ['snapshot'],
  summary: 'manage snapshots (--snapshotter NAME, env CONTAINERD_SNAPSHOTTER, default overlayfs)',
  commands,
};
