#!/usr/bin/env bash
# Builds the project and runs the snapshots benchmark (Strata vs containerd, both with overlayfs, same client, one run).
#
#   sudo bash bench/run-snapshots.sh [--ops 500] [--depth 64] [--chain-ops 200] [--rounds 3] [--snapshotter overlayfs]
#                                    [--warmup 20] [--settle-ms 1000] [--json] [--daemons strata,containerd] [--keep]
#                                    [--image-dir DIR]
#
# Must run as root: it loop-mounts a fresh ext4 for the daemons' roots (overlay snapshots need a real file system).
# Set STRATA_BENCH_CPU_PROF=DIR to also write a V8 CPU profile of stratad into DIR (see bench/lib.ts), and cut it
# with `node dist/bench/cpuprofile-top.js DIR/CPU.*.cpuprofile --window-us A-B` (windows from the --json output).
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "run-snapshots.sh: must run as root (loop mount)" >&2
  exit 1
fi
command -v containerd >/dev/null || { echo "run-snapshots.sh: containerd not found on PATH" >&2; exit 1; }

# Other work in progress may briefly break the build: retry a few times before giving up.
for attempt in 1 2 3 4 5; do
  if npx tsc -p tsconfig.json; then
    break
  fi
  if [ "$attempt" -eq 5 ]; then
    echo "run-snapshots.sh: build failed 5 times" >&2
    exit 1
  fi
  echo "run-snapshots.sh: build failed (attempt $attempt); retrying in 60 s" >&2
  sleep 60
done

exec node dist/bench/snapshots.js "$@"
