#!/usr/bin/env bash
# The fleet benchmark: N stratad instances in their own network namespaces pulling one image at once from an
# upstream docker-registry, directly and through a docker-registry pull-through cache (cold and warm);
# wall time to all-pulled and the blob bytes the upstream served (bench/fleet.ts).
#   sudo bash bench/run-fleet.sh [--nodes 2,4,8] [--layers 4] [--layer-size 16] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "bench/run-fleet.sh: must run as root (network namespaces, overlay mounts)" >&2
  exit 1
fi
npm run build >/dev/null
exec node dist/bench/fleet.js "$@"
