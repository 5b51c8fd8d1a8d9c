/**
 * The Prometheus text exposition format (version 0.0.4, what containerd's /v1/metrics serves): a writer that
 * collectors fill one metric family at a time, and a registry of collectors run at scrape time.
 *
 * No client library: counters here are plain numbers kept by their owners (the gRPC observer, the GC scheduler,
 * the transfer service), and gauges that need a walk of the database or the disk are computed when scraped.
 */

export type MetricType = 'counter' | 'gauge' | 'histogram';

/** Label pairs in output order. */
export type Labels = readonly (readonly [string, string])[];

/** The content type of the text format. */
export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** prometheus.DefBuckets, the buckets go-grpc-prometheus's handling-time histogram uses (seconds). */
export const DEFAULT_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

const escapeHelp = (s: string) => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
const escapeLabel = (s: string) => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');

/** A sample value as Go's strconv.FormatFloat(v, 'g') reads back: integers plainly, +Inf/-Inf/NaN by name. */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

export function formatLabels(labels: Labels): string {
  if (labels.length === 0) return '';
  let out = '{';
  for (let i = 0; i < labels.length; i++) {
    const [k, v] = labels[i]!;
    out += `${i > 0 ? ',' : ''}${k}="${escapeLabel(v)}"`;
  }
  return out + '}';
}

/** The formatted labels of each bucket of a histogram: `labels` plus le, the last one le="+Inf". */
export function bucketLabels(labels: Labels, bounds: readonly number[]): string[] {
  return [...bounds.map((b) => formatValue(b)), '+Inf'].map((le) => formatLabels([...labels, ['le', le]]));
}

/**
 * Collects the text of one scrape. Every family is written whole (HELP, TYPE, then all its samples). Parts may
 * be encoded already (chunk()): series that rarely change are kept as bytes between scrapes by their owner.
 */
export class TextWriter {
  private readonly parts: (string | Buffer)[] = [];
  private readonly seen = new Set<string>();

  /** Starts a family; throws if the same name was started before in this scrape (a programming error). */
  family(name: string, type: MetricType, help: string): this {
    if (this.seen.has(name)) throw new Error(`metric family ${name} written twice`);
    this.seen.add(name);
    this.parts.push(`# HELP ${name} ${escapeHelp(help)}\n# TYPE ${name} ${type}\n`);
    return this;
  }

  sample(name: string, labels: Labels, value: number): this {
    this.parts.push(`${name}${formatLabels(labels)} ${formatValue(value)}\n`);
    return this;
  }

  /** A sample whose labels were formatted before (formatLabels), for series written at every scrape. */
  sampleText(name: string, labelText: string, value: number): this {
    this.parts.push(`${name}${labelText} ${formatValue(value)}\n`);
    return this;
  }

  /** Samples already in the text format, as UTF-8 (whole lines). */
  chunk(bytes: Buffer): this {
    this.parts.push(bytes);
    return this;
  }

  /** A family with one sample and no labels. */
  single(name: string, type: 'counter' | 'gauge', help: string, value: number): this {
    return this.family(name, type, help).sample(name, [], value);
  }

  /**
   * The samples of one histogram: `counts[i]` observations fell in bucket i (not cumulative; the last entry
   * counts those above every bound), written as the cumulative _bucket series, _sum and _count.
   */
  histogram(name: string, labels: Labels, bounds: readonly number[], counts: readonly number[], sum: number): this {
    return this.histogramText(name, formatLabels(labels), bucketLabels(labels, bounds), counts, sum);
  }

  /** As histogram(), with the labels formatted before: `buckets` from bucketLabels(). */
  histogramText(name: string, labelText: string, buckets: readonly string[], counts: readonly number[], sum: number): this {
    let cumulative = 0;
    let out = '';
    for (let i = 0; i < buckets.length; i++) {
      cumulative += counts[i] ?? 0;
      out += `${name}_bucket${buckets[i]} ${cumulative}\n`;
    }
    out += `${name}_sum${labelText} ${formatValue(sum)}\n${name}_count${labelText} ${cumulative}\n`;
    this.parts.push(out);
    return this;
  }

  text(): string {
    return this.parts.map((p) => (typeof p === 'string' ? p : p.toString('utf8'))).join('');
  }

  /** The scrape's bytes (strings encoded in runs, chunks as they are). */
  bytes(): Buffer[] {
    const out: Buffer[] = [];
    let run: string[] = [];
    for (const p of this.parts) {
      if (typeof p === 'string') run.push(p);
      else {
        if (run.length > 0) out.push(Buffer.from(run.join(''), 'utf8'));
        run = [];
        out.push(p);
      }
    }
    if (run.length > 0) out.push(Buffer.from(run.join(''), 'utf8'));
    return out;
  }
}

/** One histogram's state: bucket counts (not cumulative) and the sum of observations. */
export class Histogram {
  readonly counts: number[];
  sum = 0;

  constructor(readonly bounds: readonly number[] = DEFAULT_BUCKETS) {
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }

  observe(v: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]!) i++;
    this.counts[i]!++;
    this.sum += v;
  }

  write(w: TextWriter, name: string, labels: Labels): void {
    w.histogram(name, labels, this.bounds, this.counts, this.sum);
  }

  /** Writes with labels formatted once by the caller (formatLabels, bucketLabels). */
  writeText(w: TextWriter, name: string, labelText: string, buckets: readonly string[]): void {
    w.histogramText(name, labelText, buckets, this.counts, this.sum);
  }
}

/** Writes some families into a scrape. May be async (a database or disk walk). */
export type Collector = (w: TextWriter) => void | Promise<void>;

export class Registry {
  private readonly collectors: { name: string; fn: Collector }[] = [];

  constructor(private readonly onError: (collector: string, err: unknown) => void = () => {}) {}

  add(name: string, fn: Collector): this {
    this.collectors.push({ name, fn });
    return this;
  }

  /**
   * One scrape. Collectors run in order; one that fails is left out of this scrape (reported through onError)
   * rather than failing the whole page, as the Go client's registry gathers what it can.
   */
  async render(): Promise<Buffer> {
    const out: Buffer[] = [];
    for (const { name, fn } of this.collectors) {
      const w = new TextWriter();
      try {
        await fn(w);
        out.push(...w.bytes());
      } catch (err) {
        this.onError(name, err);
      }
    }
    return Buffer.concat(out);
  }
}
