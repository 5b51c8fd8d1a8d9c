#!/usr/bin/env bash
# The snapshots benchmark: overlayfs lifecycle ops/s and prepare+mounts on a deep chain, Strata vs containerd
# (bench/run.sh). Cut a CPU profile with `node dist/bench/cpuprofile-top.js DIR/CPU.*.cpuprofile --window-us A-B`.
#   sudo bash bench/run-snapshots.sh [--ops 500] [--depth 64] [--chain-ops 200] [--rounds 3] [--snapshotter overlayfs]
#                                    [--warmup 20] [--settle-ms 1000] [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]
exec bash "$(dirname "$0")/run.sh" snapshots "$@"
