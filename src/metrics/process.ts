/**
 * Process metrics under the Prometheus client libraries' standard names (process_*), and the Node runtime's
 * (nodejs_*, as prom-client names them): event-loop delay and heap. All read at scrape time; the event-loop
 * delay comes from a perf_hooks histogram sampling every 20 ms, reset at each scrape.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { getHeapSpaceStatistics } from 'node:v8';
import type { TextWriter } from './exposition.js';

/** How often the event-loop delay is sampled. */
const LOOP_RESOLUTION_MS = 20;

/** The process's start, seconds since the epoch. */
const START_TIME = Math.round(performance.timeOrigin) / 1000;

function countFds(): number | undefined {
  try {
    return readdirSync('/proc/self/fd').length - 1; // the directory's own descriptor, open while reading it
  } catch {
    return undefined;
  }
}

function maxFds(): number | undefined {
  try {
    const m = /^Max open files\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? (m[1] === 'unlimited' ? Infinity : Number(m[1])) : undefined;
  } catch {
    return undefined;
  }
}

function virtualMemory(): number | undefined {
  try {
    // /proc/self/stat: field 23 is vsize (bytes); the command name (field 2) may hold spaces, so count after ')'.
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[20]);
  } catch {
    return undefined;
  }
}

export class ProcessCollector {
  private readonly loop: IntervalHistogram;

  constructor() {
    this.loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
    this.loop.enable();
  }

  close(): void {
    this.loop.disable();
  }

  write(w: TextWriter): void {
    const cpu = process.cpuUsage();
    w.single('process_cpu_seconds_total', 'counter', 'Total user and system CPU time spent in seconds.', (cpu.user + cpu.system) / 1e6);
    const mem = process.memoryUsage();
    w.single('process_resident_memory_bytes', 'gauge', 'Resident memory size in bytes.', mem.rss);
    const vsize = virtualMemory();
    if (vsize !== undefined) w.single('process_virtual_memory_bytes', 'gauge', 'Virtual memory size in bytes.', vsize);
    const fds = countFds();
    if (fds !== undefined) w.single('process_open_fds', 'gauge', 'Number of open file descriptors.', fds);
    const max = maxFds();
    if (max !== undefined) w.single('process_max_fds', 'gauge', 'Maximum number of open file descriptors.', max);
    w.single('process_start_time_seconds', 'gauge', 'Start time of the process since unix epoch in seconds.', START_TIME);

    // Event-loop delay since the previous scrape (nanoseconds in the histogram, which records the interval
    // between samples: the lag is what exceeds the sampling resolution).
    const h = this.loop;
    const sec = (ns: number) => (Number.isFinite(ns) ? Math.max(0, ns - LOOP_RESOLUTION_MS * 1e6) / 1e9 : 0);
    const loop: [string, string, number][] = [
      ['nodejs_eventloop_lag_min_seconds', 'The minimum recorded event loop delay.', h.min],
      ['nodejs_eventloop_lag_max_seconds', 'The maximum recorded event loop delay.', h.max],
      ['nodejs_eventloop_lag_mean_seconds', 'The mean of the recorded event loop delays.', h.mean],
      ['nodejs_eventloop_lag_p50_seconds', 'The 50th percentile of the recorded event loop delays.', h.percentile(50)],
      ['nodejs_eventloop_lag_p90_seconds', 'The 90th percentile of the recorded event loop delays.', h.percentile(90)],
      ['nodejs_eventloop_lag_p99_seconds', 'The 99th percentile of the recorded event loop delays.', h.percentile(99)],
    ];
    // Nothing recorded yet (a scrape right after the previous one): report zero rather than the sentinel.
    const empty = h.count === 0;
    for (const [name, help, ns] of loop) w.single(name, 'gauge', `${help} (seconds, since the previous scrape)`, empty ? 0 : sec(ns));
    w.single('nodejs_eventloop_lag_stddev_seconds', 'gauge', 'The standard deviation of the recorded event loop delays.', empty ? 0 : h.stddev / 1e9);
    h.reset();

    w.single('nodejs_heap_size_total_bytes', 'gauge', 'Process heap size from Node.js in bytes.', mem.heapTotal);
    w.single('nodejs_heap_size_used_bytes', 'gauge', 'Process heap size used from Node.js in bytes.', mem.heapUsed);
    w.single('nodejs_external_memory_bytes', 'gauge', 'Node.js external memory size in bytes.', mem.external);
    const spaces = getHeapSpaceStatistics();
    w.family('nodejs_heap_space_size_used_bytes', 'gauge', 'Process heap space size used from Node.js in bytes.');
    for (const s of spaces) w.sample('nodejs_heap_space_size_used_bytes', [['space', s.space_name.replace(/_space$/, '')]], s.space_used_size);
    w.family('nodejs_heap_space_size_total_bytes', 'gauge', 'Process heap space size total from Node.js in bytes.');
    for (const s of spaces) w.sample('nodejs_heap_space_size_total_bytes', [['space', s.space_name.replace(/_space$/, '')]], s.space_size);
    w.family('nodejs_version_info', 'gauge', 'Node.js version info.');
    w.sample('nodejs_version_info', [['version', process.version]], 1);
  }
}
