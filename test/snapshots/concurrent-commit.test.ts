/** Two Commits to one name at once, through stratad's snapshot service on overlayfs. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { StrataError } from '../../src/core/errdefs.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';

let d: StartedDaemon;
let c: StrataClient;
const snapshotter = 'overlayfs';

beforeAll(async () => {
  d = await startDaemon();
  c = d.client('race');
});
afterAll(async () => {
  await stopAll();
  await d?.dir.cleanup();
});

describe('Commit of two active snapshots to one name at once', () => {
  it('commits one, answers ALREADY_EXISTS to the other, and leaves the loser active and committable', async () => {
    for (let round = 0; round < 5; round++) {
      const name = `taken-${round}`;
      const keys = [`a-${round}`, `b-${round}`];
      for (const key of keys) await c.call(c.snapshots, c.snapshots.prepare, { snapshotter, key, parent: '', labels: {} });
      const results = await Promise.all(
        keys.map((key) =>
          c.call(c.snapshots, c.snapshots.commit, { parent: '', snapshotter, name, key, labels: {} }).then(
            () => 'ok' as const,
            (e: unknown) => e,
          ),
        ),
      );
      expect(results.filter((r) => r === 'ok')).toHaveLength(1);
      const lost = results.find((r) => r !== 'ok');
      expect(lost).toBeInstanceOf(StrataError);
      expect((lost as StrataError).kind).toBe('already exists');

      const loser = keys[results.indexOf(lost)]!;
      const info = (await c.call(c.snapshots, c.snapshots.stat, { snapshotter, key: loser })).info;
      expect(info?.kind).toBe(2); // ACTIVE
      expect((await c.call(c.snapshots, c.snapshots.mounts, { snapshotter, key: loser })).mounts.length).toBeGreaterThan(0);
      await c.call(c.snapshots, c.snapshots.commit, { parent: '', snapshotter, name: `${name}-other`, key: loser, labels: {} });
      expect((await c.call(c.snapshots, c.snapshots.stat, { snapshotter, key: `${name}-other` })).info?.kind).toBe(3); // COMMITTED
    }
  });
});
