#!/usr/bin/env bash
# The soak (issue 14): a real stratad under mixed concurrent work (pulls by strata and ctr, runc tasks, snapshot
# loops, image deletes, GC) for --minutes, sampling RSS, file descriptors, mounts and disk use; exits non-zero
# when anything grows without bound or any operation fails (bench/soak.ts has the criteria).
#   sudo bash bench/run-soak.sh [--minutes 30] [--warmup 5] [--sample-seconds 60] [--keep] [--image-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "bench/run-soak.sh: must run as root (loop mount, overlay mounts, runc)" >&2
  exit 1
fi
for cmd in runc ctr docker-registry skopeo; do
  command -v "$cmd" >/dev/null || { echo "bench/run-soak.sh: $cmd not found on PATH" >&2; exit 1; }
done
npx tsc -p tsconfig.json
exec node dist/bench/soak.js "$@"
