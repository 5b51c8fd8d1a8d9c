#!/usr/bin/env bash
# Per-call speed with containerd's Go client library, Strata vs containerd in alternating pairs (bench/gobench.ts).
#   sudo bash bench/run-gobench.sh [--rounds 5] [--ops 300] [--workloads lifecycle,chain,content,small,concurrent] ...
exec bash "$(dirname "$0")/run.sh" gobench "$@"
