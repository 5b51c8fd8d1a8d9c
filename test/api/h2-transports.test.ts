/**
 * Both gRPC transports of stratad serve the same calls: Strata's own HTTP/2 server (the default) and node:http2
 * (STRATA_GRPC_TRANSPORT=node-http2, the fallback). For each, a real daemon answers grpc-js (Version, an error
 * status, a 24 MiB content write and read back by digest) and containerd's Go client from 64 goroutines on
 * one connection; an unknown transport name stops the daemon at start with a message naming the variable.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { digestOfChunks, pseudoRandom } from '../helpers/data.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { checkLines, goBinary, runGo } from '../helpers/go.js';
import { StrataError } from '../../src/core/errdefs.js';
import type { StrataClient } from '../../src/api/clients/strata.js';

const started: StartedDaemon[] = [];
const clients: StrataClient[] = [];

afterAll(async () => {
  for (const c of clients) c.close();
  await stopAll();
  for (const d of started) await d.dir.cleanup();
});

for (const transport of ['strata', 'node-http2'] as const) {
  describe(`the ${transport} transport`, () => {
    let d: StartedDaemon;
    let c: StrataClient;

    it('starts and answers Version, and a failed call with its error kind', async () => {
      d = await startDaemon({ env: { STRATA_GRPC_TRANSPORT: transport } });
      started.push(d);
      c = d.client('default');
      clients.push(c);
      expect((await c.call(c.version, c.version.version, {})).version).not.toBe('');
      const err = await c.call(c.content, c.content.info, { digest: `sha256:${'0'.repeat(64)}` }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StrataError);
      expect((err as StrataError).kind).toBe('not found');
    }, 60_000);

    it('writes 24 MiB of content in a Write stream and reads it back whole with its digest', async () => {
      const chunks = () => pseudoRandom(24 << 20, 1 << 20, 7);
      const expected = digestOfChunks(chunks());
      const { digest } = await c.writeBlob(chunks(), { ref: `transport-${transport}`, expected, total: 24 << 20 });
      expect(digest).toBe(expected);
      const back: Buffer[] = [];
      for await (const b of c.readBlob(digest)) back.push(b);
      expect(digestOfChunks(back)).toBe(expected);
    }, 120_000);

    it("serves containerd's Go client from 64 goroutines on one connection", async () => {
      const bin = await goBinary('streams');
      const r = await runGo(bin, ['-address', d.address, '-namespace', 'go-transport', '-callers', '64', '-calls', '5', '-subscribers', '16'], { timeoutMs: 90_000 });
      expect([...checkLines(r.stdout)]).toEqual([
        ['concurrent callers', 'PASS'],
        ['concurrent subscriptions', 'PASS'],
      ]);
      expect(r.code).toBe(0);
    }, 120_000);
  });
}

describe('an unknown transport name', () => {
  it('stops stratad at start with a message naming STRATA_GRPC_TRANSPORT', async () => {
    const d = await startDaemon({ env: { STRATA_GRPC_TRANSPORT: 'quic' }, allowExit: true });
    started.push(d);
    for (let i = 0; i < 100 && d.proc.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
    expect(d.proc.exitCode).not.toBe(0);
    expect(d.proc.exitCode).not.toBe(null);
    expect(d.logs).toContain('STRATA_GRPC_TRANSPORT=quic');
  }, 60_000);
});
