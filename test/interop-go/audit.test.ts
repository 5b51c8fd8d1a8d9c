/**
 * The audit of issue 11, judged by containerd's Go client library (1.6.20) and its raw gRPC API clients: the
 * answers in which Strata's services differed from containerd's service and store code, now containerd's
 * (docs/go-interop.md ends with the whole table). Program: test/go/gopath/src/strata.test/interop/audit, one
 * "PASS <check>" / "FAIL <check>: why" line each; one test per check here.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { checkLines, goBinary, runGo, type GoResult } from '../helpers/go.js';

const CHECKS = [
  'content Read with a negative offset or size reads from the start and to the end',
  'content Write with an unknown action answers the offset',
  'content Abort removes an ingest under an open writer, whose commit then fails',
  'namespaces Update answers an empty namespace, takes labels.<key> paths only, publishes the request',
  'leases are listed by id; calls on an unknown lease are not found',
  "events Forward keeps the envelope's timestamp and refuses none",
  'introspection lists the service plugins and filters on type and id only',
  'snapshots answer empty keys, existing keys and names, children and update paths',
  'snapshots walk in key order with filters; usage of an active snapshot; events',
  "content and container filters take containerd's fields only",
  'namespaces appear when something is first made in them, not on failed or read-only calls',
  'a malformed filter is UNKNOWN in snapshot walks and event subscriptions, invalid argument elsewhere',
  'a label set to an empty value is not stored',
  "tasks answer unknown tasks and processes, repeated and out-of-order calls as containerd's runc shim",
  "tasks publish containerd's events with their fields",
  'tasks answer metrics filters and waits on tasks that never started as containerd',
  'tasks refuse a runtime whose shim is not installed and run the runc ones',
  "health answers the server's status and unknown services; version answers",
  'diff refuses unknown media types, labels the blob it writes, applies',
];

let d: StartedDaemon | undefined;
let run: GoResult;

beforeAll(async () => {
  const bin = await goBinary('audit');
  d = await startDaemon();
  run = await runGo(bin, ['-address', d.address, '-snapshotter', 'native'], { timeoutMs: 180_000 });
}, 240_000);

afterAll(async () => {
  await stopAll();
  await d?.dir.cleanup();
});

describe("Strata answers as containerd's services do (the audit, through the Go client)", () => {
  it('runs every check and exits 0', () => {
    expect([...checkLines(run.stdout).keys()]).toEqual(CHECKS);
    expect(run.code, `${run.stdout}\n${run.stderr.slice(-3000)}`).toBe(0);
  });

  for (const check of CHECKS) {
    it(`the Go client sees: ${check}`, () => {
      expect(checkLines(run.stdout).get(check), `${run.stdout}\n--- stderr:\n${run.stderr.slice(-3000)}\n--- stratad:\n${d?.logs.slice(-3000)}`).toBe('PASS');
    });
  }
});
