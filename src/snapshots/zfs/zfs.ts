/**
 * zfs(8) and zpool(8), the few calls the zfs snapshotter makes. Every dataset it creates has
 * `mountpoint=legacy` (as containerd's): ZFS never mounts it by itself, the snapshot's mounts do
 * (`mount -t zfs <dataset> <dir>`).
 */
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export class ZfsError extends Error {
  constructor(
    message: string,
    readonly stderr: string,
    readonly code?: string,
  ) {
    super(message);
  }
  /** The dataset (or snapshot) named does not exist. */
  get missing(): boolean {
    return /does not exist|dataset does not exist|no such/i.test(this.stderr);
  }
  get exists(): boolean {
    return /already exists/i.test(this.stderr);
  }
  get busy(): boolean {
    return /busy/i.test(this.stderr);
  }
}

function failure(cmd: string, args: string[], err: unknown): ZfsError {
  const e = err as { code?: unknown; stderr?: string | Buffer; message: string };
  if (e.code === 'ENOENT') return new ZfsError(`${cmd} command not found (zfsutils-linux is not installed)`, '');
  const stderr = String(e.stderr ?? e.message).trim();
  const said = stderr.split('\n').filter(Boolean).join('; ');
  // A full pool keeps its errno so that it is reported as one (RESOURCE_EXHAUSTED).
  const code = /out of space|No space left/i.test(stderr) ? 'ENOSPC' : undefined;
  return new ZfsError(`${cmd} ${args[0]} failed: ${said}`, stderr, code);
}

export async function zfs(args: string[]): Promise<string> {
  try {
    return (await run('zfs', args, { maxBuffer: 16 << 20 })).stdout;
  } catch (err) {
    throw failure('zfs', args, err);
  }
}

/** The synchronous form, for the few calls made inside a metadata transaction (a rename into place). */
export function zfsSync(args: string[]): string {
  try {
    return execFileSync('zfs', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    throw failure('zfs', args, err);
  }
}

export async function zpool(args: string[]): Promise<string> {
  try {
    return (await run('zpool', args, { maxBuffer: 4 << 20 })).stdout;
  } catch (err) {
    throw failure('zpool', args, err);
  }
}

const LEGACY = ['-o', 'mountpoint=legacy'];

export const createFilesystem = (name: string) => zfs(['create', ...LEGACY, name]);
export const cloneFilesystem = (snapshot: string, name: string) => zfs(['clone', ...LEGACY, snapshot, name]);
export const snapshot = (name: string) => zfs(['snapshot', name]);

/**
 * Destroys a dataset with its snapshots (`-r`: never `-R`, which would take clones too: a snapshot with a
 * clone is a parent with a child, which the records forbid removing). A dataset that is not there is fine.
 */
export async function destroy(name: string): Promise<void> {
  try {
    await zfs(['destroy', '-r', name]);
  } catch (err) {
    if (err instanceof ZfsError && err.missing) return;
    throw err;
  }
}

/** Numeric properties of a dataset (`-p`: exact bytes). */
export async function numbers(name: string, props: string[]): Promise<number[]> {
  const out = await zfs(['get', '-Hp', '-o', 'value', props.join(','), name]);
  return out
    .trim()
    .split('\n')
    .map((v) => (v === '-' ? NaN : Number(v)));
}

/** The names of the direct children (filesystems) and snapshots under a dataset, not the dataset itself. */
export async function children(name: string): Promise<{ filesystems: string[]; snapshots: string[] }> {
  const out = await zfs(['list', '-H', '-o', 'name,type', '-t', 'filesystem,snapshot', '-r', '-d', '2', name]);
  const filesystems: string[] = [];
  const snapshots: string[] = [];
  for (const line of out.split('\n')) {
    const [n, type] = line.split('\t');
    if (!n || n === name) continue;
    const rest = n.slice(name.length + 1);
    if (type === 'filesystem' && !rest.includes('/')) filesystems.push(n);
    if (type === 'snapshot' && !rest.includes('/')) snapshots.push(n);
  }
  return { filesystems, snapshots };
}

/**
 * Objects (files, directories...) a dataset or snapshot refers to, from ZFS's per-user object accounting
 * (`zfs userspace -o objused`, summed over users): no mount needed. undefined where the pool does not keep
 * that accounting (the userobj_accounting feature is off).
 */
export async function usedObjects(name: string): Promise<number | undefined> {
  const out = await zfs(['userspace', '-Hp', '-o', 'objused', name]);
  let total = 0;
  for (const v of out.split('\n').map((l) => l.trim()).filter(Boolean)) {
    if (v === '-' || !/^\d+$/.test(v)) return undefined;
    total += Number(v);
  }
  return total;
}

/** Writes out the pool's pending changes (a txg sync): space and object figures are exact afterwards. */
export const syncPool = (pool: string) => zpool(['sync', pool]);
