/**
 * Nanosecond timestamps (containerd keeps time.Time; its suites compare against nanosecond clock readings).
 * A NanoTime is a Date that also carries the nanoseconds within its millisecond, so every `Date`-typed field
 * stays a Date and only the places that make, store or send a time look at the extra digits (design:
 * /work/contracts/ns-time.md). A plain Date counts as whole milliseconds.
 */
import { performance } from 'node:perf_hooks';

export class NanoTime extends Date {
  /** Nanoseconds within the millisecond, 0..999_999. */
  readonly subMs: number;
  constructor(ms: number, subMs = 0) {
    super(ms);
    this.subMs = subMs;
  }
}

/** The nanoseconds within the millisecond of any Date (0 for a plain Date). */
export const subMsOf = (d: Date): number => (d instanceof NanoTime ? d.subMs : 0);

export const fromParts = (ms: number, subMs: number | null | undefined): NanoTime => new NanoTime(ms, subMs ?? 0);

export function toNanos(d: Date): bigint {
  return BigInt(d.getTime()) * 1_000_000n + BigInt(subMsOf(d));
}

export function fromNanos(ns: bigint): NanoTime {
  let ms = ns / 1_000_000n;
  let sub = ns % 1_000_000n;
  if (sub < 0n) {
    sub += 1_000_000n;
    ms -= 1n;
  }
  return new NanoTime(Number(ms), Number(sub));
}

// The wall clock in nanoseconds: the process start's wall time (microsecond-exact) against the monotonic
// clock, re-anchored when it strays from Date.now() by more than a millisecond (the clock was stepped).
let anchor = computeAnchor();
let last = 0n;

function computeAnchor(): bigint {
  const hr = process.hrtime.bigint();
  const wallNs = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
  return wallNs - hr;
}

/** Now, with nanoseconds; strictly increasing within the process. */
export function nowNanos(): bigint {
  let ns = anchor + process.hrtime.bigint();
  const drift = ns / 1_000_000n - BigInt(Date.now());
  if (drift > 1n || drift < -1n) {
    anchor = computeAnchor();
    ns = anchor + process.hrtime.bigint();
  }
  if (ns <= last) ns = last + 1n;
  last = ns;
  return ns;
}

export const now = (): NanoTime => fromNanos(nowNanos());

/** RFC 3339 with nanoseconds, as Go's time.RFC3339Nano in UTC (trailing zeros of the fraction dropped). */
export function toRFC3339Nano(d: Date): string {
  const iso = d.toISOString(); // 2006-01-02T15:04:05.000Z
  const frac = (String(d.getUTCMilliseconds()).padStart(3, '0') + String(subMsOf(d)).padStart(6, '0')).replace(/0+$/, '');
  return `${iso.slice(0, 19)}${frac ? `.${frac}` : ''}Z`;
}

/** Parses RFC 3339 with up to nanoseconds (any offset); undefined if it is not one. */
export function parseRFC3339Nano(s: string): NanoTime | undefined {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/i.exec(s.trim());
  if (!m) return undefined;
  const base = Date.parse(`${m[1]}${m[3]!.toUpperCase()}`);
  if (Number.isNaN(base)) return undefined;
  const frac = (m[2] ?? '').padEnd(9, '0');
  return new NanoTime(base + Number(frac.slice(0, 3)), Number(frac.slice(3)));
}
