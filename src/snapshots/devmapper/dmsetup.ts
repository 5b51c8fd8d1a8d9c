/**
 * dmsetup(8), the few calls the devmapper snapshotter makes: thin devices are created and deleted by messages
 * to the pool, activated as dm devices with a `thin` table, suspended and resumed around a snapshot of them.
 * Without udev (containers, the VM tier), DM_DISABLE_UDEV=1 makes dmsetup create the /dev/mapper nodes itself.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const SECTOR_SIZE = 512;

/** dmsetup's environment: udev is used only where it runs. */
function env(): NodeJS.ProcessEnv {
  if (process.env.DM_DISABLE_UDEV !== undefined || existsSync('/run/udev/control')) return process.env;
  return { ...process.env, DM_DISABLE_UDEV: '1' };
}

export class DmError extends Error {
  constructor(
    message: string,
    readonly stderr: string,
  ) {
    super(message);
  }
  /** The kernel answered ENODATA (a thin id the pool does not have). */
  get noData(): boolean {
    return /No data available/i.test(this.stderr);
  }
  get busy(): boolean {
    return /busy/i.test(this.stderr);
  }
  get missing(): boolean {
    return /No such device or address|not found|does not exist/i.test(this.stderr);
  }
}

export async function dmsetup(args: string[]): Promise<string> {
  try {
    return (await run('dmsetup', args, { env: env(), maxBuffer: 4 << 20 })).stdout;
  } catch (err) {
    const e = err as { code?: unknown; stderr?: string; message: string };
    if (e.code === 'ENOENT') throw new DmError('dmsetup not found', '');
    const stderr = (e.stderr ?? e.message).trim();
    throw new DmError(`dmsetup ${args[0]} failed: ${stderr.split('\n').filter(Boolean).join('; ')}`, stderr);
  }
}

export const devicePath = (name: string) => `/dev/mapper/${name}`;

export const createThin = (pool: string, id: number) => dmsetup(['message', devicePath(pool), '0', `create_thin ${id}`]);
export const createSnap = (pool: string, id: number, origin: number) => dmsetup(['message', devicePath(pool), '0', `create_snap ${id} ${origin}`]);

/** Deletes a thin id from the pool; an id the pool does not have is not an error. */
export async function deleteThin(pool: string, id: number): Promise<void> {
  try {
    await dmsetup(['message', devicePath(pool), '0', `delete ${id}`]);
  } catch (err) {
    if (!(err instanceof DmError && err.noData)) throw err;
  }
}

export const activate = (pool: string, name: string, id: number, sizeBytes: number) =>
  dmsetup(['create', name, '--table', `0 ${Math.floor(sizeBytes / SECTOR_SIZE)} thin ${devicePath(pool)} ${id}`]);
export const suspend = (name: string) => dmsetup(['suspend', name]);
export const resume = (name: string) => dmsetup(['resume', name]);

/** Whether a dm device of that name exists (loaded). */
export async function exists(name: string): Promise<boolean> {
  try {
    await dmsetup(['info', name]);
    return true;
  } catch {
    return false;
  }
}

/** Removes a dm device (not its thin id), retrying while it is busy; a device that is not there is fine. */
export async function deactivate(name: string, opts: { force?: boolean; attempts?: number } = {}): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    if (!(await exists(name))) return;
    try {
      await dmsetup(['remove', ...(opts.force ? ['--force'] : []), name]);
      return;
    } catch (err) {
      if (!(err instanceof DmError && err.busy) || attempt >= (opts.attempts ?? 50)) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** `dmsetup status` of a thin device: its mapped sectors (the first parameter after the target). */
export async function mappedBytes(name: string): Promise<number> {
  const out = (await dmsetup(['status', name])).trim();
  const f = out.split(/\s+/);
  if (f[2] !== 'thin' || f[3] === undefined) throw new Error(`unexpected dmsetup status ${JSON.stringify(out)}`);
  if (f[3] === 'Fail') throw new Error(`thin device ${name} failed`);
  return Number(f[3]) * SECTOR_SIZE;
}

/** The names of the dm devices whose name starts with prefix (`dmsetup ls`). */
export async function listNames(prefix: string): Promise<string[]> {
  const out = await dmsetup(['ls']);
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n.startsWith(prefix));
}

export function version(): string {
  return execFileSync('dmsetup', ['version'], { env: env(), encoding: 'utf8' });
}
