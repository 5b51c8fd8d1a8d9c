/** What a failed call's status tells the client: the error kind's code, and never a path of the daemon's. */
import { mkdtemp, readFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toStatus } from '../../src/api/call.js';
import { GrpcCode, notFound } from '../../src/core/errdefs.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-status-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function failure(op: () => Promise<unknown>): Promise<unknown> {
  return op().then(
    () => expect.unreachable('the call succeeded'),
    (e: unknown) => e,
  );
}

describe('call status of an error', () => {
  it('a file call error that escaped its store keeps its errno and call but loses the daemon path', async () => {
    const err = await failure(() => readFile(join(dir, 'missing')));
    const st = toStatus(err);
    expect(st.code).toBe(GrpcCode.UNKNOWN);
    expect(st.details).toBe('ENOENT: no such file or directory, open');
    expect(st.details).not.toContain(dir);
  });

  it('a two-path call (rename) loses both paths', async () => {
    const err = await failure(() => rename(join(dir, 'a'), join(dir, 'b')));
    const st = toStatus(err);
    expect(st.details).toBe('ENOENT: no such file or directory, rename');
  });

  it('a typed error keeps its kind and message as written', () => {
    expect(toStatus(notFound('snapshot x'))).toEqual({ code: GrpcCode.NOT_FOUND, details: 'snapshot x: not found' });
  });
});
