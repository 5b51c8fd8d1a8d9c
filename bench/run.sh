#!/usr/bin/env bash
# Builds the project and runs one daemon-against-daemon benchmark (Strata vs containerd, same client, one run).
#
#   sudo bash bench/run.sh NAME [options]       NAME: content-ingest | snapshots | pull | gc | tasks  (options: NAME --help)
#
# Must run as root: it loop-mounts a fresh ext4 for the daemons' roots (and drops page caches between phases).
# Set STRATA_BENCH_CPU_PROF=DIR to also write a V8 CPU profile of stratad into DIR (see bench/lib.ts).
set -euo pipefail

cd "$(dirname "$0")/.."
name=${1:?usage: bench/run.sh NAME [options]}
shift
[ -f "bench/$name.ts" ] || { echo "bench/run.sh: no benchmark bench/$name.ts" >&2; exit 1; }
if [ "$(id -u)" -ne 0 ]; then
  echo "bench/run.sh: must run as root (loop mount, drop_caches)" >&2
  exit 1
fi
command -v containerd >/dev/null || { echo "bench/run.sh: containerd not found on PATH" >&2; exit 1; }

npx tsc -p tsconfig.json
exec node "dist/bench/$name.js" "$@"
