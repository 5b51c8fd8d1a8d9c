/**
 * containerd's own snapshotter suite (snapshots/testsuite's SnapshotterSuite, unmodified, through
 * snapshots/proxy: the Go interop tier's `suites` test binary) against a real stratad serving devmapper and
 * zfs, in the VM tier. devmapper: a thin pool on loop files in the guest's tmpfs, named in the plugin's
 * `pool_name`; zfs: a pool on a file vdev, the plugin's `root_path` on its dataset. One daemon per
 * snapshotter; each case of the suite is one test here, asserted on its parsed `--- PASS` line, with the
 * case's output on failure. The Go binary is built on first use (test/go/bin, shared with the host: build it
 * there first, `npx vitest run test/interop-go/containerd-suites.test.ts`, to save the guest the compile).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { goBinary, goTestOutput, goTestResults, runGo, type GoResult } from '../helpers/go.js';
import { makeThinPool, requireDeviceMapper, type ThinPool } from './helpers.js';
import { makeZfsPool, requireZfs, type ZfsPool } from './zfs-helpers.js';

const SNAPSHOT_CASES = [
  'Basic', 'StatActive', 'StatComitted', 'TransitivityTest', 'PreareViewFailingtest', 'Update', 'Remove', 'Walk',
  'LayerFileupdate', 'RemoveDirectoryInLowerLayer', 'Chown', 'DirectoryPermissionOnCommit',
  'RemoveIntermediateSnapshot', 'DeletedFilesInChildSnapshot', 'MoveFileFromLowerLayer', 'ViewReadonly',
  'StatInWalk', 'CloseTwice', 'RootPermission', '128LayersMount',
];

/** Under emulation the 128-layer case alone takes minutes. */
const SUITE_TIMEOUT_MS = 45 * 60_000;

afterAll(async () => {
  await stopAll();
});

for (const snapshotter of ['devmapper', 'zfs'] as const) {
  describe(`containerd's snapshotter suite (snapshots/testsuite over snapshots/proxy) on ${snapshotter} against stratad`, () => {
    let d: StartedDaemon | undefined;
    let thin: ThinPool | undefined;
    let zpool: ZfsPool | undefined;
    let run: GoResult | undefined;

    beforeAll(async () => {
      const bin = await goBinary('suites');
      let config: string;
      if (snapshotter === 'devmapper') {
        await requireDeviceMapper();
        thin = await makeThinPool('4G');
        config = `[plugins."io.containerd.snapshotter.v1.devmapper"]\npool_name = "${thin.name}"\nbase_image_size = "256MB"\n`;
      } else {
        await requireZfs();
        zpool = await makeZfsPool('2G');
        config = `[plugins."io.containerd.snapshotter.v1.zfs"]\nroot_path = "${zpool.mountpoint}/root"\n`;
      }
      d = await startDaemon({ logLevel: 'info', config });
      run = await runGo(bin, ['-test.v', '-test.count=1', '-test.run', '^TestSnapshotterSuite$', '-test.timeout', `${SUITE_TIMEOUT_MS / 1000}s`], {
        env: { STRATA_ADDRESS: d.address, STRATA_SNAPSHOTTER: snapshotter },
        timeoutMs: SUITE_TIMEOUT_MS,
      });
    }, SUITE_TIMEOUT_MS + 120_000);

    afterAll(async () => {
      await d?.stop();
      await thin?.remove();
      await zpool?.destroy();
    });

    const expectCase = (name: string) => {
      expect(run, 'the Go test binary did not run (see beforeAll)').toBeDefined();
      const results = goTestResults(run!.stdout);
      expect(results.get(name), `${name}:\n${goTestOutput(run!.stdout, name)}\n--- stderr:\n${run!.stderr.slice(-3000)}\n--- stratad:\n${d?.logs.slice(-3000)}`).toBe('PASS');
    };

    it('runs all 21 cases: 20 pass and Rename is skipped by the suite itself', () => {
      expect(run, 'the Go test binary did not run (see beforeAll)').toBeDefined();
      const results = goTestResults(run!.stdout);
      const cases = [...results].filter(([n]) => n.startsWith('TestSnapshotterSuite/'));
      expect(cases.map(([n]) => n.slice('TestSnapshotterSuite/'.length)).sort()).toEqual([...SNAPSHOT_CASES, 'Rename'].sort());
      expect(results.get('TestSnapshotterSuite/Rename')).toBe('SKIP');
      expect(results.get('TestSnapshotterSuite'), `${run!.stdout.slice(-4000)}\n${run!.stderr.slice(-2000)}`).toBe('PASS');
    });

    for (const c of SNAPSHOT_CASES) {
      it(`the snapshotter suite's ${c} case passes on ${snapshotter}`, () => expectCase(`TestSnapshotterSuite/${c}`));
    }
  });
}
