/**
 * A backend's trash: removed snapshots' directories are renamed into `<root>/trash/` within the call that
 * removed them (one rename, whatever they hold) and deleted in the background, a few at a time, after the call
 * answered. What a crash or a failed deletion leaves in it is queued again by `queueLeftovers()` (at open and
 * at Cleanup). overlayfs and erofs share it.
 */
import { renameSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { crashPoint, type CrashPoint } from '../core/crashpoint.js';
import { removeTree } from '../core/remove.js';
import type { Logger } from '../log/index.js';

const isErrno = (err: unknown, code: string) => (err as NodeJS.ErrnoException | undefined)?.code === code;

/** Crash points a backend names for the reliability walk (test/reliability): after the move, around a deletion. */
export interface TrashCrashPoints {
  afterMove?: CrashPoint;
  beforeDelete?: CrashPoint;
  afterDelete?: CrashPoint;
}

export class Trash {
  private readonly queued: string[] = [];
  private emptying: Promise<void> | undefined;

  constructor(
    readonly dir: string,
    private readonly log: Logger,
    private readonly crashPoints: TrashCrashPoints = {},
  ) {}

  /**
   * Moves `path` into the trash as `name` and queues its deletion. Never throws: a path already gone is
   * nothing to do, any other failure is logged and left where it is for a Cleanup.
   */
  put(path: string, name: string): void {
    try {
      renameSync(path, join(this.dir, name));
      if (this.crashPoints.afterMove) crashPoint(this.crashPoints.afterMove);
      this.queued.push(name);
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) this.log.warn('failed to move a removed snapshot directory to the trash', { name, error: err });
      return;
    }
    this.emptying ??= this.empty();
  }

  /** Queues what is in the trash and not queued yet (left by a crash, a stop, a failed deletion). */
  queueLeftovers(): void {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return;
    }
    const queued = new Set(this.queued);
    for (const n of names) if (!queued.has(n)) this.queued.push(n);
    if (this.queued.length > 0) this.emptying ??= this.empty();
  }

  /** Resolves when nothing queued is waiting for deletion. */
  async settled(): Promise<void> {
    while (this.emptying) await this.emptying;
  }

  /** Deletes queued directories until none is left (a few at a time, off the calls' path). */
  private async empty(): Promise<void> {
    // Let the call that queued the directory answer first.
    await new Promise((r) => setImmediate(r));
    try {
      while (this.queued.length > 0) {
        const batch = this.queued.splice(0, 8);
        await Promise.all(
          batch.map((name) => {
            const path = join(this.dir, name);
            if (this.crashPoints.beforeDelete) crashPoint(this.crashPoints.beforeDelete);
            return removeTree(path).then(
              () => {
                if (this.crashPoints.afterDelete) crashPoint(this.crashPoints.afterDelete);
              },
              (err: unknown) => this.log.warn('failed to remove a snapshot directory', { name, error: err }),
            );
          }),
        );
      }
    } finally {
      this.emptying = undefined;
    }
  }
}
