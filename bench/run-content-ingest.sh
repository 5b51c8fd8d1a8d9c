#!/usr/bin/env bash
# The content-ingest benchmark: a 1 GiB blob through gRPC Write and Read, Strata vs containerd (bench/run.sh).
#   sudo bash bench/run-content-ingest.sh [--size 1GiB] [--rounds 3] [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]
exec bash "$(dirname "$0")/run.sh" content-ingest "$@"
