/**
 * containerd's own test suites, unmodified, against a real stratad over gRPC: content/testsuite's
 * ContentSuite through content/proxy (with leases through leases/proxy, one namespace per case, as
 * containerd's integration/client/content_test.go does) and its ContentCrossNSSharedSuite (the shared content
 * policy, Strata's), and snapshots/testsuite's SnapshotterSuite through
 * snapshots/proxy on overlayfs, native, btrfs and erofs (btrfs on a loop-mounted btrfs, the plugin's root_path;
 * erofs: the Go client's mount code mounts its erofs ro,loop views and overlays over loop-mounted images).
 * The Go test binary (test/go/gopath/src/strata.test/interop/suites) runs once per daemon with -test.v; each
 * case of the suite is one test here, asserted on the parsed `--- PASS` line, with the case's output on failure.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeBtrfs, type BtrfsFs } from '../helpers/btrfs.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { goBinary, goTestOutput, goTestResults, runGo, type GoResult } from '../helpers/go.js';

const CONTENT_CASES = [
  'Writer', 'UpdateStatus', 'CommitExists', 'Resume', 'ResumeTruncate', 'ResumeDiscard', 'ResumeCopy',
  'ResumeCopySeeker', 'ResumeCopyReaderAt', 'SmallBlob', 'Labels', 'CommitErrorState',
];
const SNAPSHOT_CASES = [
  'Basic', 'StatActive', 'StatComitted', 'TransitivityTest', 'PreareViewFailingtest', 'Update', 'Remove', 'Walk',
  'LayerFileupdate', 'RemoveDirectoryInLowerLayer', 'Chown', 'DirectoryPermissionOnCommit',
  'RemoveIntermediateSnapshot', 'DeletedFilesInChildSnapshot', 'MoveFileFromLowerLayer', 'ViewReadonly',
  'StatInWalk', 'CloseTwice', 'RootPermission', '128LayersMount',
];

afterAll(async () => {
  await stopAll();
});

function expectCase(run: GoResult | undefined, name: string, status: 'PASS' | 'SKIP' = 'PASS'): void {
  expect(run, 'the Go test binary did not run (see beforeAll)').toBeDefined();
  const results = goTestResults(run!.stdout);
  expect(results.get(name), `${name}:\n${goTestOutput(run!.stdout, name)}\n--- stderr:\n${run!.stderr.slice(-3000)}`).toBe(status);
}

describe("containerd's content suites (content/testsuite over content/proxy) against stratad", () => {
  let d: StartedDaemon;
  let run: GoResult;

  beforeAll(async () => {
    const bin = await goBinary('suites');
    d = await startDaemon({ logLevel: 'info' });
    run = await runGo(bin, ['-test.v', '-test.count=1', '-test.run', '^TestContent(Suite|CrossNSSharedSuite)$'], {
      env: { STRATA_ADDRESS: d.address },
      timeoutMs: 170_000,
    });
  }, 180_000);

  afterAll(async () => {
    await d?.stop();
  });

  it('runs all 12 cases and passes every one of them', () => {
    const results = goTestResults(run.stdout);
    const cases = [...results].filter(([n]) => n.startsWith('TestContentSuite/'));
    expect(cases.map(([n]) => n.slice('TestContentSuite/'.length)).sort()).toEqual([...CONTENT_CASES].sort());
    expect(results.get('TestContentSuite'), run.stdout.slice(-4000)).toBe('PASS');
  });

  for (const c of CONTENT_CASES) {
    it(`the content suite's ${c} case passes`, () => expectCase(run, `TestContentSuite/${c}`));
  }

  // containerd's shared content policy (its default, and Strata's): a blob committed in one namespace is
  // adopted by another without sending it again, and appending to a shared blob's ingest works.
  for (const c of ['CrossNamespaceAppend', 'CrossNamespaceShare']) {
    it(`the shared-policy content suite's ${c} case passes`, () => expectCase(run, `TestContentCrossNSSharedSuite/${c}`));
  }
});

for (const snapshotter of ['overlayfs', 'native', 'btrfs', 'erofs'] as const) {
  describe(`containerd's snapshotter suite (snapshots/testsuite over snapshots/proxy) on ${snapshotter} against stratad`, () => {
    let d: StartedDaemon;
    let fs: BtrfsFs | undefined;
    let run: GoResult;

    beforeAll(async () => {
      const bin = await goBinary('suites');
      let config = '';
      if (snapshotter === 'btrfs') {
        fs = await makeBtrfs(2 * 2 ** 30);
        config = `[plugins."io.containerd.snapshotter.v1.btrfs"]\nroot_path = "${fs.path}/snapshots"\n`;
      }
      d = await startDaemon({ logLevel: 'info', config });
      run = await runGo(bin, ['-test.v', '-test.count=1', '-test.run', '^TestSnapshotterSuite$'], {
        env: { STRATA_ADDRESS: d.address, STRATA_SNAPSHOTTER: snapshotter },
        timeoutMs: 170_000,
      });
    }, 180_000);

    afterAll(async () => {
      await d?.stop();
      await fs?.cleanup();
    });

    it('runs all 21 cases: 20 pass and Rename is skipped by the suite itself', () => {
      const results = goTestResults(run.stdout);
      const cases = [...results].filter(([n]) => n.startsWith('TestSnapshotterSuite/'));
      expect(cases.map(([n]) => n.slice('TestSnapshotterSuite/'.length)).sort()).toEqual([...SNAPSHOT_CASES, 'Rename'].sort());
      expect(results.get('TestSnapshotterSuite/Rename')).toBe('SKIP');
      expect(results.get('TestSnapshotterSuite'), `${run.stdout.slice(-4000)}\n${run.stderr.slice(-2000)}`).toBe('PASS');
    });

    for (const c of SNAPSHOT_CASES) {
      it(`the snapshotter suite's ${c} case passes on ${snapshotter}`, () => expectCase(run, `TestSnapshotterSuite/${c}`));
    }
  });
}
