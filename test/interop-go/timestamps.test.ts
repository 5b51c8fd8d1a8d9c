/**
 * Nanosecond timestamps, judged by containerd's Go client library: records made through the client (content,
 * snapshot, image, container, lease) carry created/updated times that lie between two nanosecond clock readings
 * taken around each call, and the daemon answers exactly the same times (to the nanosecond) after a restart.
 * Program: test/go/gopath/src/strata.test/interop/timestamps.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { goBinary, runGo } from '../helpers/go.js';

let d: StartedDaemon | undefined;

afterAll(async () => {
  await stopAll();
  await d?.dir.cleanup();
});

const recordLines = (out: string) => out.split('\n').filter((l) => /^(content|snapshot|image|container|lease) /.test(l));

describe('nanosecond timestamps through the Go client', () => {
  it('every record is stamped within the call to the nanosecond, and keeps those nanoseconds across a restart', async () => {
    const bin = await goBinary('timestamps');
    d = await startDaemon();
    const made = await runGo(bin, ['make', d.address]);
    expect(made.code, `${made.stdout}\n${made.stderr}\n${d.logs.slice(-2000)}`).toBe(0);
    const before = recordLines(made.stdout);
    expect(before.map((l) => l.split(' ')[0])).toEqual(['content', 'snapshot', 'image', 'container', 'lease']);
    // Sub-millisecond digits are there (a millisecond clock would print at most 3 fraction digits everywhere).
    expect(before.some((l) => /\.\d{4,9}Z/.test(l)), before.join('\n')).toBe(true);

    await d.stop();
    d = await d.restart();
    const read = await runGo(bin, ['read', d.address]);
    expect(read.code, `${read.stdout}\n${read.stderr}`).toBe(0);
    expect(recordLines(read.stdout)).toEqual(before);
  });
});
