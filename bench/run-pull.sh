#!/usr/bin/env bash
# The pull benchmark: pull+unpack of three single-layer images (base-OS-like, 50k small files, one 1 GiB file) from a
# local docker-registry, containerd (ctr) vs stratad (ctr and its own CLI), with GNU tar's extraction as the floor
# (bench/run.sh).
#   sudo bash bench/run-pull.sh [--rounds 3] [--images a,b,c] [--big-rounds N] [--base-files 10000] [--base-size 200MB]
#                               [--small-files 50000] [--big-size 1G] [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]
exec bash "$(dirname "$0")/run.sh" pull "$@"
