#!/usr/bin/env bash
# The VM tier, whole (docs/vm-tier.md): the tier's vitest files in one boot (devmapper and zfs suites,
# containerd's suite, ctr...), then the power-cut harness at its CI count. Bounded in time: past the bound the
# running part is stopped and the tier fails saying so.
#
#   scripts/vm/tier.sh [--if-available]
#
#   --if-available  when this host cannot boot the guest (no QEMU, no kernel with its modules, not root...),
#                   say why on one line and exit 0 (what `npm test` does); without it, exit 1 then (.ci/run)
#   STRATA_VM_TIER=off        skip it (said, never silent); =required: as without --if-available
#   STRATA_VM_TIER_TIMEOUT    the bound of the whole tier, seconds (default 900: .ci/run stays under 45 min)
#   STRATA_POWER_CUTS         power cuts (default 2 here; docs/reliability.md has the 50-per-target run)
#   STRATA_VM_TIER_FILES      the vitest files to run (default: the CI set below; `test/vm` runs them all:
#                             the devmapper and zfs 34-behaviour suites and containerd's suite on both add
#                             about 25 minutes on an idle 2-core machine, too much for CI's budget)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/common.sh"
optional=0
[ "${1:-}" = --if-available ] && optional=1
[ "${STRATA_VM_TIER:-}" = required ] && optional=0
if [ "${STRATA_VM_TIER:-}" = off ]; then echo "VM tier: not run: STRATA_VM_TIER=off"; exit 0; fi

# Why this host cannot run the tier, or nothing.
why_not() {
  [ "$(id -u)" = 0 ] || { echo "not root (the guest's 9p root and its mounts need it)"; return; }
  command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 is missing (bash scripts/vm/setup.sh installs the tier's packages)"; return; }
  local ver
  ver=$(vm_kernel_version 2>/dev/null) || { echo "no kernel with both /boot/vmlinuz-<ver> and /lib/modules/<ver> (bash scripts/vm/setup.sh)"; return; }
  [ -r "/boot/vmlinuz-$ver" ] || { echo "/boot/vmlinuz-$ver is not readable"; return; }
  { command -v busybox >/dev/null && file -L "$(command -v busybox)" | grep -q 'statically linked'; } || [ -x /bin/busybox ] || { echo "busybox-static is missing (bash scripts/vm/setup.sh)"; return; }
  for t in dmsetup thin_check mkfs.btrfs cpio; do command -v "$t" >/dev/null || { echo "$t is missing (bash scripts/vm/setup.sh)"; return; }; done
  [ -f "$repo/dist/test/vm/power/guest.js" ] || { echo "no build (npm run build)"; return; }
}
reason=$(why_not)
if [ -n "$reason" ]; then
  if [ "$optional" = 1 ]; then echo "VM tier: not run: $reason"; exit 0; fi
  echo "VM tier: cannot run: $reason" >&2
  exit 1
fi

budget=${STRATA_VM_TIER_TIMEOUT:-900}
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
failed=0
cd "$repo"
echo "VM tier: bound ${budget}s (STRATA_VM_TIER_TIMEOUT)"

# 1. The vitest files, one boot. A disk for tests that want one (the zfs pool's file vdev lives in tmpfs).
# The CI set: ctr pull + run on devmapper and zfs (stratad, and containerd 1.6 with Strata as proxy plugins),
# ctr plugins ls, devmapper's crash recovery (idle machine: about 4 minutes in one boot).
files=${STRATA_VM_TIER_FILES:-test/vm/ctr.test.ts test/vm/ctr-proxy.test.ts test/vm/devmapper-recovery.test.ts}
b=$SECONDS
# shellcheck disable=SC2086
"$here/run.sh" --timeout "$(left)" --mem "${STRATA_VM_MEM:-3072}" -- npx vitest run -c vitest.vm.config.ts $files
rc=$?
echo "VM tier: vitest files: status $rc, $((SECONDS - b)) s"
if [ "$rc" = 124 ]; then echo "VM tier: FAILED: over its bound of ${budget}s during the vitest files" >&2; exit 1; fi
[ "$rc" = 0 ] || failed=1

# 2. The power cuts, at the CI count, in what is left of the bound.
b=$SECONDS
if [ "$(left)" -le 60 ]; then echo "VM tier: FAILED: no time left for the power cuts within ${budget}s" >&2; exit 1; fi
STRATA_POWER_TARGETS=${STRATA_POWER_TARGETS:-content,overlayfs,native,btrfs,devmapper,zfs} \
STRATA_POWER_DEADLINE=$(( $(date +%s) + $(left) )) "$here/power-cuts.sh" --cuts "${STRATA_POWER_CUTS:-2}"
rc=$?
echo "VM tier: power cuts: status $rc, $((SECONDS - b)) s"
if [ "$rc" = 124 ]; then echo "VM tier: FAILED: over its bound of ${budget}s during the power cuts" >&2; exit 1; fi
[ "$rc" = 0 ] || failed=1

echo "VM tier: $((SECONDS - start)) s in all; $([ $failed = 0 ] && echo passed || echo FAILED)"
exit "$failed"
