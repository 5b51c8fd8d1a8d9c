#!/usr/bin/env bash
# The GC benchmark: pause of a collection over 10k blobs and 2k overlayfs snapshots (half kept through an image's
# references), measured around Delete(lease, sync=true), Strata vs containerd (bench/run.sh; containerd logs at debug).
#   sudo bash bench/run-gc.sh [--blobs 10000] [--snapshots 2000] [--depth 10] [--blob-size 512] [--rounds 3]
#                             [--concurrency 16] [--settle-ms 1000] [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]
exec bash "$(dirname "$0")/run.sh" gc "$@"
