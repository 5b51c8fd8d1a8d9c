/**
 * Summarises a V8 .cpuprofile (as written by `node --cpu-prof`): the functions with the most self time, and the
 * most inclusive time, with file:line, optionally only for samples taken in a time window.
 *
 *   node dist/bench/cpuprofile-top.js PROFILE.cpuprofile [--top 25] [--from-ms N] [--to-ms N] [--window-us A-B[,C-D...]]
 *                                     [--callers FUNCTION]
 *
 * --callers prints the most common call stacks (6 frames) of the samples whose leaf is FUNCTION.
 *
 * --from-ms/--to-ms are relative to the start of the profile; --window-us takes absolute monotonic-clock µs
 * ranges, e.g. the writeWindowUs/readWindowUs of content-ingest's --json results.
 *
 * Used with `STRATA_BENCH_CPU_PROF=DIR bash bench/run-content-ingest.sh --daemons strata` to see where stratad
 * spends its time during the content-ingest benchmark.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    top: { type: 'string', default: '25' },
    'from-ms': { type: 'string' },
    'to-ms': { type: 'string' },
    'window-us': { type: 'string' },
    callers: { type: 'string' },
  },
});
const file = positionals[0];
if (!file) {
  process.stderr.write('usage: node dist/bench/cpuprofile-top.js PROFILE.cpuprofile [--top 25] [--from-ms N] [--to-ms N]\n');
  process.exit(2);
}
const top = Number(values.top);
const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;

const byId = new Map<number, ProfileNode>(p.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

const short = (url: string) => url.replace(/^file:\/\//, '').replace(/^.*\/node_modules\//, 'node_modules/').replace(/^.*\/work\/main\//, '');
const key = (f: CallFrame) => `${f.functionName || '(anonymous)'}  ${f.url ? `${short(f.url)}:${f.lineNumber + 1}` : '(native/VM)'}`;

// Sample times: timeDeltas[i] is the time since the previous sample; weight each sample by the following delta.
const from = values['from-ms'] !== undefined ? Number(values['from-ms']) * 1000 : -Infinity;
const to = values['to-ms'] !== undefined ? Number(values['to-ms']) * 1000 : Infinity;
const windows = values['window-us']?.split(',').map((r) => r.split('-').map(Number) as [number, number]);
const stacks = new Map<string, number>();
const self = new Map<string, number>();
const incl = new Map<string, number>();
let total = 0;
let t = 0;
for (let i = 0; i < p.samples.length; i++) {
  t += p.timeDeltas[i] ?? 0;
  if (t < from || t > to) continue;
  if (windows && !windows.some(([a, b]) => p.startTime + t >= a && p.startTime + t <= b)) continue;
  const w = p.timeDeltas[i + 1] ?? 0;
  const id = p.samples[i]!;
  const node = byId.get(id)!;
  const k = key(node.callFrame);
  self.set(k, (self.get(k) ?? 0) + w);
  total += w;
  if (values.callers && node.callFrame.functionName === values.callers) {
    const frames: string[] = [];
    for (let cur: number | undefined = id; cur !== undefined && frames.length < 6; cur = parent.get(cur)) frames.push(key(byId.get(cur)!.callFrame));
    const sk = frames.join('\n          <- ');
    stacks.set(sk, (stacks.get(sk) ?? 0) + w);
  }
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const kk = key(byId.get(cur)!.callFrame);
    if (seen.has(kk)) continue;
    seen.add(kk);
    incl.set(kk, (incl.get(kk) ?? 0) + w);
  }
}

const ms = (us: number) => (us / 1000).toFixed(0).padStart(8);
const pct = (us: number) => ((100 * us) / total).toFixed(1).padStart(5) + '%';
const idleKeys = (k: string) => k.startsWith('(idle)') || k.startsWith('(program)') || k.startsWith('(garbage collector)');
const idle = [...self].filter(([k]) => k.startsWith('(idle)')).reduce((a, [, v]) => a + v, 0);

process.stdout.write(`${file}\nsampled ${(total / 1000).toFixed(0)} ms, of which idle ${(idle / 1000).toFixed(0)} ms (busy ${((total - idle) / 1000).toFixed(0)} ms)\n\n`);
process.stdout.write(`top ${top} by self time (ms, % of all samples):\n`);
for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) process.stdout.write(`${ms(v)} ${pct(v)}  ${k}\n`);
process.stdout.write(`\ntop ${top} by inclusive time (excluding idle/program/gc and the root):\n`);
for (const [k, v] of [...incl]
  .filter(([k]) => !idleKeys(k) && !k.startsWith('(root)'))
  .sort((a, b) => b[1] - a[1])
  .slice(0, top))
  process.stdout.write(`${ms(v)} ${pct(v)}  ${k}\n`);

if (values.callers) {
  process.stdout.write(`\ncall stacks of ${values.callers}:\n`);
  for (const [k, v] of [...stacks].sort((a, b) => b[1] - a[1]).slice(0, 8)) process.stdout.write(`${ms(v)} ${pct(v)}  ${k}\n`);
}
