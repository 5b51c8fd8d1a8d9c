/**
 * Fuzzing the gRPC decoders of a real stratad (test/fuzz/grpc-gen.ts): for every method of every service
 * definition in src/api/gen, a bounded number of random and malformed request bodies over a raw HTTP/2
 * connection. Each call must end with a gRPC status (never a reset or a dropped connection), of one of the codes
 * containerd's errors map to (INTERNAL only for a request that does not decode, as grpc-go answers it), with no
 * host path and no JavaScript internals in its message; after each method a normal call succeeds, and the
 * daemon logged no unexpected failure.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GrpcCode } from '../../src/core/errdefs.js';
import { SubscribeRequest } from '../../src/api/gen/containerd/services/events/v1/events.js';
import { ImportRequest } from '../../src/api/gen/strata/services/transfer/v1/transfer.js';
import { ApplyRequest, DiffRequest } from '../../src/api/gen/containerd/services/diff/v1/diff.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { checkOutcome, fuzzBody, fuzzHeaders, generatedMethods, RawGrpc, unexpectedLogLines, type FuzzMethod } from './grpc-gen.js';

/** Cases per method in CI, from seed FUZZ_SEED (default 1) on. */
const PER_METHOD = Number(process.env.FUZZ_GRPC_CASES ?? 12);
const FIRST_SEED = Number(process.env.FUZZ_SEED ?? 1);

const repo = fileURLToPath(new URL('../..', import.meta.url));
let d: StartedDaemon;
let raw: RawGrpc;
let methods: FuzzMethod[];
const cwdBefore = readdirSync(process.cwd()).sort();

beforeAll(async () => {
  methods = await generatedMethods(join(repo, 'src', 'api', 'gen'));
  // With the GC scheduler, so that the GC service is served too.
  d = await startDaemon({ logLevel: 'info', gc: true });
  raw = await RawGrpc.connect(d.address);
});
afterAll(async () => {
  raw?.close();
  await stopAll();
});

const VERSION = '/containerd.services.version.v1.Version/Version';
const EMPTY = Buffer.alloc(5);
const frame = (msg: Uint8Array) => Buffer.concat([lenPrefix(msg.length), msg]);
function lenPrefix(n: number): Buffer {
  const b = Buffer.alloc(5);
  b.writeUInt32BE(n, 1);
  return b;
}

describe('random bytes to every gRPC method', () => {
  it('a Content.Write without a namespace is FAILED_PRECONDITION and stratad keeps serving (seed 1 once stopped it)', async () => {
    const write = methods.find((m) => m.path === '/containerd.services.content.v1.Content/Write')!;
    const out = await raw.call(write.path, fuzzBody(1, write).body, fuzzHeaders(1));
    expect(fuzzHeaders(1)['containerd-namespace']).toBeUndefined();
    expect(out.code, out.failure).toBe(GrpcCode.FAILED_PRECONDITION);
    expect(out.message).toBe('namespace is required: failed precondition');
    expect((await raw.call(VERSION, EMPTY, {})).code).toBe(GrpcCode.OK);
    expect(d.proc.exitCode).toBeNull();
  });

  it('a Transfer.Import of a path that does not exist is NOT_FOUND naming it, not a daemon error in the log', async () => {
    const body = frame(ImportRequest.encode(ImportRequest.fromPartial({ path: 'no-such-archive.tar' })).finish());
    const out = await raw.call('/strata.services.transfer.v1.Transfer/Import', body, { 'containerd-namespace': 'fuzz' });
    expect(out.code, out.failure).toBe(GrpcCode.NOT_FOUND);
    expect(out.message).toBe('archive "no-such-archive.tar": not found: not found');
    expect(unexpectedLogLines(d.logs, [d.dir.path])).toEqual([]);
  });

  it('a Transfer.Import of a directory or of a path with a NUL is INVALID_ARGUMENT, not a daemon error in the log', async () => {
    for (const [path, want] of [
      [d.dir.path, 'is a directory'],
      ['x\u0000y', 'contains a NUL'],
    ] as const) {
      const body = frame(ImportRequest.encode(ImportRequest.fromPartial({ path })).finish());
      const out = await raw.call('/strata.services.transfer.v1.Transfer/Import', body, { 'containerd-namespace': 'fuzz' });
      expect(out.code, out.failure).toBe(GrpcCode.INVALID_ARGUMENT);
      expect(out.message).toContain(want);
    }
    expect(unexpectedLogLines(d.logs, [d.dir.path])).toEqual([]);
  });

  it('a Diff.Diff of a mount of an unknown file system type is INVALID_ARGUMENT without the daemon\'s temporary mount point', async () => {
    const req = DiffRequest.fromPartial({ left: [], right: [{ type: 'no-such-fs', source: 'none', target: '', options: [] }] });
    const out = await raw.call('/containerd.services.diff.v1.Diff/Diff', frame(DiffRequest.encode(req).finish()), { 'containerd-namespace': 'fuzz' });
    expect(out.code, out.failure).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(out.message).toContain('on <temporary mount point>: ');
    expect(out.message).not.toContain('/tmp/');
    expect(unexpectedLogLines(d.logs, [d.dir.path])).toEqual([]);
  });

  it('an Events.Subscribe with a bad filter is UNKNOWN as in containerd, and not logged as a daemon error', async () => {
    const body = frame(SubscribeRequest.encode(SubscribeRequest.fromPartial({ filters: ['a >|:|< b'] })).finish());
    const out = await raw.call('/containerd.services.events.v1.Events/Subscribe', body, { 'containerd-namespace': 'fuzz' });
    expect(out.code, out.failure).toBe(GrpcCode.UNKNOWN);
    expect(out.message).toContain('failed parsing subscription filters');
    expect(unexpectedLogLines(d.logs, [d.dir.path])).toEqual([]);
  });

  it('a Diff.Apply of a media type no stream processor takes is UNKNOWN in containerd\'s words, not a daemon error in the log', async () => {
    const req = ApplyRequest.fromPartial({ diff: { mediaType: 'x/fuzz', digest: `sha256:${'0'.repeat(64)}`, size: 1 }, mounts: [] });
    const out = await raw.call('/containerd.services.diff.v1.Diff/Apply', frame(ApplyRequest.encode(req).finish()), { 'containerd-namespace': 'fuzz' });
    expect(out.code, out.failure).toBe(GrpcCode.UNKNOWN);
    expect(out.message).toBe('failed to get stream processor for x/fuzz: no processor for media-type');
    expect(unexpectedLogLines(d.logs, [d.dir.path])).toEqual([]);
  });

  it('a whole message over max_recv_message_size (16 MiB + 1) is RESOURCE_EXHAUSTED and the connection keeps serving', async () => {
    const body = Buffer.concat([lenPrefix((16 << 20) + 1), Buffer.alloc((16 << 20) + 1, 0x0a)]);
    const out = await raw.call('/containerd.services.content.v1.Content/Info', body, { 'containerd-namespace': 'fuzz' });
    expect(out.code, out.failure).toBe(GrpcCode.RESOURCE_EXHAUSTED);
    expect(out.message).toBe(
      `Received message larger than max (${(16 << 20) + 1} vs. ${16 << 20}): over the limit max_recv_message_size = ${16 << 20} ([grpc])`,
    );
    expect((await raw.call(VERSION, EMPTY, {})).code).toBe(GrpcCode.OK);
  });

  it('the generated definitions list every service stratad serves, and it serves every one of them', async () => {
    const services = new Set(methods.map((m) => m.path.split('/')[1]));
    expect([...services].sort()).toEqual([
      'containerd.services.containers.v1.Containers',
      'containerd.services.content.v1.Content',
      'containerd.services.diff.v1.Diff',
      'containerd.services.events.v1.Events',
      'containerd.services.images.v1.Images',
      'containerd.services.introspection.v1.Introspection',
      'containerd.services.leases.v1.Leases',
      'containerd.services.namespaces.v1.Namespaces',
      'containerd.services.snapshots.v1.Snapshots',
      'containerd.services.tasks.v1.Tasks',
      'containerd.services.version.v1.Version',
      'grpc.health.v1.Health',
      'strata.services.gc.v1.GC',
      'strata.services.transfer.v1.Transfer',
    ]);
    // An unknown path is UNIMPLEMENTED "unknown method"; each generated one is routed to a handler.
    const unknown = await raw.call('/containerd.services.nope.v1.Nope/Nope', EMPTY, {});
    expect(unknown.code).toBe(GrpcCode.UNIMPLEMENTED);
    expect(unknown.message).toContain('unknown method');
    for (const m of methods) {
      const out = await raw.call(m.path, EMPTY, { 'containerd-namespace': 'fuzz', 'grpc-timeout': '2S' });
      expect(out.message, m.path).not.toContain('unknown method');
    }
  });

  it(`${PER_METHOD} malformed requests per method: a status every time, no host path, the daemon keeps serving`, async () => {
    const problems: string[] = [];
    const codes = new Map<number | string, number>();
    let calls = 0;
    for (const [mi, m] of methods.entries()) {
      const outs = await Promise.all(
        Array.from({ length: PER_METHOD }, async (_, i) => {
          // Seeds differ from method to method, so every kind of body reaches some method.
          const seed = FIRST_SEED + mi * PER_METHOD + i;
          const { what, body } = fuzzBody(seed, m);
          const out = await raw.call(m.path, body, fuzzHeaders(seed));
          return { seed, what, out };
        }),
      );
      for (const { seed, what, out } of outs) {
        calls++;
        codes.set(out.code ?? out.failure ?? '?', (codes.get(out.code ?? out.failure ?? '?') ?? 0) + 1);
        for (const p of checkOutcome(out, [d.dir.path, '/tmp/strata-mount-'])) problems.push(`${m.path} seed ${seed} (${what}): ${p}`);
        if (process.env.FUZZ_VERBOSE) process.stdout.write(`${m.path} ${seed} ${what}: ${out.code ?? out.failure} ${out.message.slice(0, 200)}\n`);
      }
      const ok = await raw.call(VERSION, EMPTY, {});
      if (ok.code !== GrpcCode.OK) {
        problems.push(`after ${m.path}: Version answered ${ok.code} ${ok.failure ?? ok.message}`);
        await new Promise((r) => setTimeout(r, 200));
        if (d.proc.exitCode !== null || d.proc.signalCode !== null) throw new Error(`stratad exited after ${m.path}:\n${problems.join('\n')}\n${d.logs.slice(-4000)}`);
        raw.close();
        raw = await RawGrpc.connect(d.address);
      }
    }
    process.stdout.write(`fuzz grpc: ${methods.length} methods, ${calls} calls, codes ${JSON.stringify(Object.fromEntries(codes))}\n`);
    // The bodies reached the decoders' every outcome: decoded and answered, undecodable, oversized, compressed.
    for (const code of [GrpcCode.OK, GrpcCode.INVALID_ARGUMENT, GrpcCode.NOT_FOUND, GrpcCode.INTERNAL, GrpcCode.RESOURCE_EXHAUSTED, GrpcCode.UNIMPLEMENTED]) {
      expect(codes.get(code) ?? 0, `code ${code}`).toBeGreaterThan(0);
    }
    problems.push(...unexpectedLogLines(d.logs, [d.dir.path]).map((l) => `daemon log: ${l}`));
    expect(problems).toEqual([]);
    // A fresh connection is served too, and nothing was written in the daemon's working directory.
    const again = await RawGrpc.connect(d.address);
    try {
      expect((await again.call(VERSION, EMPTY, {})).code).toBe(GrpcCode.OK);
    } finally {
      again.close();
    }
    expect(readdirSync(process.cwd()).sort()).toEqual(cwdBefore);
  }, 600_000);
});
