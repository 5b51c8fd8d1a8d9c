#!/usr/bin/env bash
# `npm test`: the host suite (vitest.config.ts), then the VM tier when this host can boot it
# (scripts/vm/tier.sh --if-available says why not otherwise; STRATA_VM_TIER=required makes that a failure,
# STRATA_VM_TIER=off skips it, saying so). Both run whatever the other did; the status is non-zero if either
# failed. `npm run test:host` and `npm run test:vm` run one of them.
set -uo pipefail
cd "$(dirname "$0")/.."
npx vitest run "$@"
host=$?
bash scripts/vm/tier.sh --if-available
vm=$?
[ "$host" = 0 ] || echo "npm test: the host suite FAILED (status $host)" >&2
[ "$vm" = 0 ] || echo "npm test: the VM tier FAILED (status $vm)" >&2
[ "$host" = 0 ] && [ "$vm" = 0 ]
