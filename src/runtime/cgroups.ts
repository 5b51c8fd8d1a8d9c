/**
 * Task metrics: the cgroup statistics of a task's init process, read from /sys/fs/cgroup (v2 on a unified
 * host, else the v1 controllers). The fields are those of containerd's io.containerd.cgroups.v1/v2.Metrics
 * that Strata fills; src/api/services/tasks.ts encodes them.
 */
import { readFileSync, statfsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

export type CgroupStats =
  | {
      version: 1;
      pids: { current: bigint; limit: bigint };
      cpu: { total: bigint; kernel: bigint; user: bigint; perCpu: bigint[] };
      memory: {
        cache: bigint;
        rss: bigint;
        totalCache: bigint;
        totalRss: bigint;
        usage: { limit: bigint; usage: bigint; max: bigint; failcnt: bigint };
      };
    }
  | {
      version: 2;
      pids: { current: bigint; limit: bigint };
      cpu: { usageUsec: bigint; userUsec: bigint; systemUsec: bigint; nrPeriods: bigint; nrThrottled: bigint; throttledUsec: bigint };
      memory: { anon: bigint; file: bigint; usage: bigint; usageLimit: bigint; swapUsage: bigint; swapLimit: bigint };
    };

const CGROUP2_SUPER_MAGIC = 0x63677270;
const big = (s: string | undefined): bigint => {
  const v = s?.trim();
  if (!v || v === 'max') return 0n;
  try {
    return BigInt(v);
  } catch {
    return 0n;
  }
};
const readOr = async (path: string): Promise<string | undefined> => readFile(path, 'utf8').catch(() => undefined);
const keyed = (text: string | undefined): Map<string, string> =>
  new Map(
    (text ?? '')
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f.length >= 2)
      .map((f) => [f[0]!, f[1]!]),
  );

/** The cgroup statistics of the cgroup a process is in (v2 on a unified host, else v1). */
export async function cgroupStats(pid: number): Promise<CgroupStats> {
  const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').trim().split('\n');
  const paths = new Map<string, string>();
  for (const line of lines) {
    const [, controllers, path] = line.split(':');
    for (const c of (controllers ?? '').split(',')) paths.set(c, path ?? '/');
  }
  if (statfsSync('/sys/fs/cgroup').type === CGROUP2_SUPER_MAGIC) {
    const dir = join('/sys/fs/cgroup', paths.get('') ?? '/');
    const cpu = keyed(await readOr(join(dir, 'cpu.stat')));
    const mem = keyed(await readOr(join(dir, 'memory.stat')));
    return {
      version: 2,
      pids: { current: big(await readOr(join(dir, 'pids.current'))), limit: big(await readOr(join(dir, 'pids.max'))) },
      cpu: {
        usageUsec: big(cpu.get('usage_usec')),
        userUsec: big(cpu.get('user_usec')),
        systemUsec: big(cpu.get('system_usec')),
        nrPeriods: big(cpu.get('nr_periods')),
        nrThrottled: big(cpu.get('nr_throttled')),
        throttledUsec: big(cpu.get('throttled_usec')),
      },
      memory: {
        anon: big(mem.get('anon')),
        file: big(mem.get('file')),
        usage: big(await readOr(join(dir, 'memory.current'))),
        usageLimit: big(await readOr(join(dir, 'memory.max'))),
        swapUsage: big(await readOr(join(dir, 'memory.swap.current'))),
        swapLimit: big(await readOr(join(dir, 'memory.swap.max'))),
      },
    };
  }
  const v1 = (controller: string, file: string) => readOr(join('/sys/fs/cgroup', controller, paths.get(controller) ?? '/', file));
  const stat = keyed(await v1('memory', 'memory.stat'));
  const cpuStat = keyed(await v1('cpuacct', 'cpuacct.stat'));
  // cpuacct.stat counts USER_HZ ticks (100 per second on Linux).
  const ticks = (n: bigint) => n * 10_000_000n;
  return {
    version: 1,
    pids: { current: big(await v1('pids', 'pids.current')), limit: big(await v1('pids', 'pids.max')) },
    cpu: {
      total: big(await v1('cpuacct', 'cpuacct.usage')),
      kernel: ticks(big(cpuStat.get('system'))),
      user: ticks(big(cpuStat.get('user'))),
      perCpu: ((await v1('cpuacct', 'cpuacct.usage_percpu')) ?? '').trim().split(/\s+/).filter(Boolean).map((x) => big(x)),
    },
    memory: {
      cache: big(stat.get('cache')),
      rss: big(stat.get('rss')),
      totalCache: big(stat.get('total_cache')),
      totalRss: big(stat.get('total_rss')),
      usage: {
        limit: big(await v1('memory', 'memory.limit_in_bytes')),
        usage: big(await v1('memory', 'memory.usage_in_bytes')),
        max: big(await v1('memory', 'memory.max_usage_in_bytes')),
        failcnt: big(await v1('memory', 'memory.failcnt')),
      },
    },
  };
}
