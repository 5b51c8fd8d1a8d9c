#!/usr/bin/env bash
# The task benchmark: container start latency (ctr run --rm ... echo hi, to first output) and a run -d / task rm -f /
# container rm loop, containerd vs stratad, the same ctr client (bench/run.sh).
#   sudo bash bench/run-tasks.sh [--rounds 2] [--runs 15] [--loop 15] [--json] [--daemons strata,containerd] [--keep]
exec bash "$(dirname "$0")/run.sh" tasks "$@"
