#!/usr/bin/env bash
# Builds the project and runs the content-ingest benchmark (Strata vs containerd, same client, one run).
#
#   sudo bash bench/run-content-ingest.sh [--size 1GiB] [--rounds 3] [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]
#
# Must run as root: it loop-mounts a fresh ext4 for the daemons' roots and drops page caches between phases.
# Set STRATA_BENCH_CPU_PROF=DIR to also write a V8 CPU profile of stratad into DIR (see bench/content-ingest.ts).
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "run-content-ingest.sh: must run as root (loop mount, drop_caches)" >&2
  exit 1
fi
command -v containerd >/dev/null || { echo "run-content-ingest.sh: containerd not found on PATH" >&2; exit 1; }

# Other work in progress may briefly break the build: retry a few times before giving up.
for attempt in 1 2 3 4 5; do
  if npx tsc -p tsconfig.json; then
    break
  fi
  if [ "$attempt" -eq 5 ]; then
    echo "run-content-ingest.sh: build failed 5 times" >&2
    exit 1
  fi
  echo "run-content-ingest.sh: build failed (attempt $attempt); retrying in 60 s" >&2
  sleep 60
done

exec node dist/bench/content-ingest.js "$@"
