/**
 * The GC scheduler: decides when the collector runs, with containerd's gc/scheduler rules and options.
 *
 * Every committed write of the metadata store is a mutation (`mutated(false)`); a write that removed something
 * (a record, a lease, a lease resource) is a deletion (`mutated(true)`). As in containerd, a deletion makes the
 * database "dirty" until the next collection, and every mutation while dirty also counts as a deletion. Then:
 *
 * - A collection is *due* when it was requested (scheduleAndWait, an expired lease), when anything was deleted
 *   since the last one, or when `mutation_threshold` (> 0) mutations happened since the last one.
 * - A due collection runs at the earliest `interval` after the previous one ended, where
 *   interval = avg pause / pause_threshold - avg pause (the average over all runs; 1 s before the first run, or
 *   when pause_threshold is 0). This is the pause backoff: collections take at most ~pause_threshold of real time.
 * - It runs after `schedule_delay` instead, ignoring the backoff, when it was requested, when
 *   `deletion_threshold` (> 0) deletions happened, or, before the very first run when no startup run is pending,
 *   when a deletion (deletion_threshold 0) or mutation_threshold mutations happened.
 * - The first collection runs `startup_delay` after start, whatever happened (none when it is 0).
 * - scheduleAndWait() callers that arrive before a run starts share that run; those that arrive while one runs
 *   get the next one (the running one may have marked before their change). Any run resolves its waiters.
 *
 * Unlike containerd, leases with `containerd.io/gc.expire` are collected on time: after every run (and after
 * writes, which may have created leases) the scheduler sets a timer for the earliest future expiry, and when it
 * passes a collection is requested. containerd only notices an expired lease at whatever collection comes next.
 *
 * Mutations that happen while a collection runs count toward the next one (containerd drops events stamped
 * before the end of a collection; here the mark phase is synchronous, so a write during a run is after its mark).
 */
import { invalidArgument } from '../core/errdefs.js';
import { silentLogger, type Logger } from '../log/index.js';
import type { Collector, GCMetrics, GCObjectType, GCReport, GCScheduler } from './types.js';

/** The plugin's configuration, as in containerd's [plugins."io.containerd.gc.v1.scheduler"]. */
export interface SchedulerConfig {
  /** Upper bound on the share of real time spent paused in scheduled collections (0 to 0.5). */
  pause_threshold: number;
  /** Deletions since the last collection that trigger one right away (0: deletions wait for the backoff). */
  deletion_threshold: number;
  /** Mutations since the last collection that make one due (0: mutations alone never do). */
  mutation_threshold: number;
  /** Delay before a triggered collection runs (a Go duration: "0ms", "1s"). */
  schedule_delay: string;
  /** Delay of the first collection after start (a Go duration; "0s": none until something triggers one). */
  startup_delay: string;
}

export const schedulerDefaults = (): SchedulerConfig => ({
  pause_threshold: 0.02,
  deletion_threshold: 0,
  mutation_threshold: 100,
  schedule_delay: '0ms',
  startup_delay: '100ms',
});

export interface SchedulerOptions {
  log?: Logger;
  /** The earliest future lease expiry, ms since the epoch (MetadataStore.leases.nextExpiry); none: no timer. */
  nextExpiry?: () => number | undefined;
}

const GO_UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, 'μs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** A Go duration ("100ms", "1.5s", "1m30s", "0") in milliseconds, as containerd's TOML writes them. */
export function parseGoDuration(s: string): number {
  const m = /^([-+]?)(.*)$/s.exec(s)!;
  let rest = m[2]!;
  if (rest === '0') return 0;
  if (rest === '') throw invalidArgument(`invalid duration ${JSON.stringify(s)}`);
  let total = 0;
  while (rest !== '') {
    const part = /^(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)/.exec(rest);
    if (!part) throw invalidArgument(`invalid duration ${JSON.stringify(s)}`);
    total += Number(part[1]) * GO_UNIT_MS[part[2]!]!;
    rest = rest.slice(part[0].length);
  }
  return (m[1] === '-' ? -1 : 1) * total;
}

/** The effective settings, clamped as containerd clamps them. */
export interface SchedulerSettings {
  pauseThreshold: number;
  deletionThreshold: number;
  mutationThreshold: number;
  scheduleDelayMs: number;
  startupDelayMs: number;
}

export function schedulerSettings(config: Partial<SchedulerConfig> = {}): SchedulerSettings {
  const c = { ...schedulerDefaults(), ...config };
  const num = (key: keyof SchedulerConfig, v: unknown, integer: boolean): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
      throw invalidArgument(`gc scheduler: ${key} must be a ${integer ? 'whole number' : 'number'}, not ${JSON.stringify(v)}`);
    }
    return v;
  };
  const dur = (key: keyof SchedulerConfig, v: unknown): number => {
    if (typeof v !== 'string') throw invalidArgument(`gc scheduler: ${key} must be a duration string such as "100ms", not ${JSON.stringify(v)}`);
    return Math.max(0, parseGoDuration(v));
  };
  return {
    pauseThreshold: Math.min(0.5, Math.max(0, num('pause_threshold', c.pause_threshold, false))),
    deletionThreshold: Math.max(0, num('deletion_threshold', c.deletion_threshold, true)),
    mutationThreshold: Math.max(0, num('mutation_threshold', c.mutation_threshold, true)),
    scheduleDelayMs: dur('schedule_delay', c.schedule_delay),
    startupDelayMs: dur('startup_delay', c.startup_delay),
  };
}

const OBJECT_TYPES: GCObjectType[] = ['content', 'ingest', 'snapshot', 'image', 'lease', 'container'];
/** setTimeout's limit (about 24.8 days); a later expiry re-arms when this one fires. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Fire a little after the expiry so that the collector's clock has passed it. */
const EXPIRY_SLACK_MS = 5;
/** The interval before any collection ran, or when pause_threshold is 0 (containerd's). */
const DEFAULT_INTERVAL_MS = 1000;

interface Waiter {
  resolve(r: GCReport): void;
  reject(e: Error): void;
}

export class Scheduler implements GCScheduler {
  readonly settings: SchedulerSettings;
  private readonly log: Logger;
  private readonly nextExpiry?: () => number | undefined;

  private timer?: NodeJS.Timeout;
  private timerAt?: number;
  private expiryTimer?: NodeJS.Timeout;
  private expiryAt?: number;
  private expiryCheckQueued = false;

  /** Set from the moment a run is decided until it has been accounted (also during the collector's sync part). */
  private busy = false;
  private running?: Promise<void>;
  private waiters: Waiter[] = [];
  private closed = false;

  // Since the last collection started.
  private triggered = false;
  private dirty = false;
  private deletions = 0;
  private mutations = 0;

  private lastEnd?: number;
  private intervalMs = DEFAULT_INTERVAL_MS;
  private pauseSum = 0;
  private collections = 0;

  private readonly counters: GCMetrics = {
    runs: 0,
    pauseMsTotal: 0,
    pauseMsLast: 0,
    removedObjects: Object.fromEntries(OBJECT_TYPES.map((t) => [t, 0])) as Record<GCObjectType, number>,
    removedBytes: 0,
  };

  constructor(
    /** The collector it runs (dry runs, why and prune go to it directly). */
    readonly collector: Collector,
    config: Partial<SchedulerConfig> = {},
    opts: SchedulerOptions = {},
  ) {
    this.settings = schedulerSettings(config);
    this.log = opts.log ?? silentLogger;
    this.nextExpiry = opts.nextExpiry;
    if (this.settings.startupDelayMs > 0) this.arm(Date.now() + this.settings.startupDelayMs);
    this.refreshExpiry();
  }

  mutated(deletion: boolean): void {
    if (this.closed) return;
    if (deletion) this.dirty = true;
    this.mutations++;
    if (this.dirty) this.deletions++;
    if (!this.busy) this.evaluate();
    // The write may have created a lease with an expiry: look again once the current burst of writes is over.
    this.queueExpiryCheck();
  }

  scheduleAndWait(): Promise<GCReport> {
    if (this.closed) return Promise.reject(new Error('garbage collection scheduler is closed'));
    return new Promise<GCReport>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.trigger();
    });
  }

  metrics(): GCMetrics {
    const m = this.counters;
    return { ...m, removedObjects: { ...m.removedObjects }, ...(m.lastRunAt ? { lastRunAt: new Date(m.lastRunAt) } : {}) };
  }

  /** Stops the timers, lets a running collection finish, and fails the callers still waiting. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.disarm();
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    await this.running;
    for (const w of this.waiters.splice(0)) w.reject(new Error('garbage collection scheduler is closed'));
  }

  // ---- decisions ----

  private trigger(): void {
    this.triggered = true;
    if (!this.busy) this.evaluate();
  }

  private due(): boolean {
    const { mutationThreshold } = this.settings;
    return this.triggered || this.deletions > 0 || (mutationThreshold > 0 && this.mutations >= mutationThreshold);
  }

  /** Arms the timer for a due collection (never while one runs: its end evaluates again). */
  private evaluate(): void {
    if (this.closed || this.busy || !this.due()) return;
    const { deletionThreshold, mutationThreshold, scheduleDelayMs } = this.settings;
    const now = Date.now();
    const beforeFirst = this.lastEnd === undefined;
    const urgent =
      this.triggered ||
      (deletionThreshold > 0 && this.deletions >= deletionThreshold) ||
      (beforeFirst &&
        this.timer === undefined &&
        ((deletionThreshold === 0 && this.deletions > 0) || (mutationThreshold > 0 && this.mutations >= mutationThreshold)));
    let at: number;
    if (urgent) at = now + scheduleDelayMs;
    else if (beforeFirst) return; // the startup run (or a threshold) comes first
    else at = Math.max(now, this.lastEnd! + this.intervalMs);
    if (this.timerAt === undefined || at < this.timerAt) this.arm(at);
  }

  private arm(at: number): void {
    this.disarm();
    this.timerAt = at;
    this.timer = setTimeout(() => this.fire(), Math.min(MAX_TIMER_MS, Math.max(0, at - Date.now())));
    this.timer.unref();
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = undefined;
  }

  private fire(): void {
    const at = this.timerAt;
    if (at !== undefined && Date.now() < at - 1) return this.arm(at); // a clamped long timer
    this.timer = undefined;
    this.timerAt = undefined;
    if (this.closed || this.busy) return;
    // The startup run happens whatever happened; later ones only when due (containerd skips a tick otherwise).
    if (this.lastEnd !== undefined && !this.due()) return;
    this.busy = true;
    this.running = this.run();
  }

  private async run(): Promise<void> {
    const waiters = this.waiters.splice(0);
    const before = { triggered: this.triggered, dirty: this.dirty, deletions: this.deletions, mutations: this.mutations };
    this.triggered = false;
    this.dirty = false;
    this.deletions = 0;
    this.mutations = 0;
    let report: GCReport | undefined;
    let failure: Error | undefined;
    try {
      report = await this.collector.collect();
    } catch (err) {
      failure = err instanceof Error ? err : new Error(String(err));
    }
    this.lastEnd = Date.now();
    if (report) {
      this.account(report);
      this.log.debug('garbage collected', {
        pauseMs: round3(report.pauseMs),
        elapsedMs: round3(report.elapsedMs),
        removed: report.removed.length,
        expiredLeases: report.expiredLeases.length,
      });
      for (const e of report.errors) this.log.warn('garbage collection could not remove data', { object: e.object, error: e.error });
      for (const w of waiters) w.resolve(report);
    } else {
      this.log.error('garbage collection failed', { error: failure });
      // As containerd: keep what made it due and try again after the same interval plus a second.
      this.triggered ||= before.triggered;
      this.dirty ||= before.dirty;
      this.deletions += before.deletions;
      this.mutations += before.mutations;
      for (const w of waiters) w.reject(new Error(`garbage collection failed: ${failure!.message}`));
    }
    this.busy = false;
    this.running = undefined;
    if (this.closed) return;
    this.refreshExpiry();
    // After a failure, the retry waits (as containerd's); a new request or deletion may still bring it forward.
    if (failure) this.arm(this.lastEnd + this.intervalMs + 1000);
    else this.evaluate();
  }

  private account(report: GCReport): void {
    this.collections++;
    this.pauseSum += report.pauseMs;
    const { pauseThreshold } = this.settings;
    if (pauseThreshold > 0) {
      const avg = this.pauseSum / this.collections;
      this.intervalMs = avg / pauseThreshold - avg;
    }
    const m = this.counters;
    m.runs++;
    m.pauseMsTotal += report.pauseMs;
    m.pauseMsLast = report.pauseMs;
    m.lastRunAt = new Date(this.lastEnd!);
    const seen = new Set<string>();
    for (const r of report.removed) {
      m.removedObjects[r.type] = (m.removedObjects[r.type] ?? 0) + 1;
      m.removedBytes += r.size;
      if (r.type === 'lease') seen.add(`${r.namespace}/${r.id}`);
    }
    // Expired leases are removed objects too, unless the collector already listed them.
    for (const l of report.expiredLeases) if (!seen.has(`${l.namespace}/${l.id}`)) m.removedObjects.lease++;
  }

  // ---- lease expiry ----

  private queueExpiryCheck(): void {
    if (!this.nextExpiry || this.expiryCheckQueued || this.closed) return;
    this.expiryCheckQueued = true;
    setImmediate(() => {
      this.expiryCheckQueued = false;
      this.refreshExpiry();
    }).unref();
  }

  /** Sets the timer for the earliest future lease expiry. */
  private refreshExpiry(): void {
    if (!this.nextExpiry || this.closed) return;
    let next: number | undefined;
    try {
      next = this.nextExpiry();
    } catch (err) {
      this.log.warn('cannot read lease expiries', { error: err });
      return;
    }
    if (next === this.expiryAt && (next === undefined || this.expiryTimer)) return;
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    this.expiryAt = next;
    if (next === undefined) return;
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, next - Date.now() + EXPIRY_SLACK_MS));
    this.expiryTimer = setTimeout(() => this.expired(), delay);
    this.expiryTimer.unref();
  }

  private expired(): void {
    this.expiryTimer = undefined;
    const at = this.expiryAt;
    this.expiryAt = undefined;
    if (this.closed) return;
    if (at !== undefined && Date.now() < at) return this.refreshExpiry(); // a clamped long timer
    this.log.debug('lease expired: scheduling garbage collection', { expiredAt: at === undefined ? undefined : new Date(at).toISOString() });
    this.trigger();
  }
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;
