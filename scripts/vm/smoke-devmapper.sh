#!/usr/bin/env bash
# A device-mapper thin-pool smoke test, to run inside the guest (scripts/vm/run.sh --disk 2G -- bash
# scripts/vm/smoke-devmapper.sh): a pool on the first virtio disk (metadata on a loop file in tmpfs), a thin
# device with ext4, a thin snapshot of it, both mounted and read back, then everything removed. Prints each
# step; exits non-zero at the first failure.
set -euo pipefail
export DM_DISABLE_UDEV=1
here=$(cd "$(dirname "$0")" && pwd)
data=${STRATA_VM_DISKS%% *}
[ -b "${data:-}" ] || { echo "smoke: no virtio disk (run with --disk 2G)" >&2; exit 2; }
step() { echo "smoke: $*"; }

step "modprobe dm-thin-pool loop"; modprobe dm-thin-pool; modprobe loop
step "pool"; "$here/../devmapper-pool.sh" create smoke-pool --data "$data" --meta /tmp/smoke-meta --meta-size 64M
dmsetup message smoke-pool 0 "create_thin 1"
dmsetup create smoke-thin1 --table "0 2097152 thin /dev/mapper/smoke-pool 1"
step "mkfs.ext4"; mkfs.ext4 -q -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 /dev/mapper/smoke-thin1
mkdir -p /tmp/m1 /tmp/m2
mount /dev/mapper/smoke-thin1 /tmp/m1
echo hello > /tmp/m1/file
umount /tmp/m1
step "snapshot"
dmsetup suspend smoke-thin1
dmsetup message smoke-pool 0 "create_snap 2 1"
dmsetup resume smoke-thin1
dmsetup create smoke-thin2 --table "0 2097152 thin /dev/mapper/smoke-pool 2"
mount /dev/mapper/smoke-thin2 /tmp/m2
echo world >> /tmp/m2/file
mount -o ro /dev/mapper/smoke-thin1 /tmp/m1
[ "$(cat /tmp/m1/file)" = hello ] && [ "$(cat /tmp/m2/file)" = "hello
world" ] || { echo "smoke: snapshot contents differ" >&2; exit 1; }
step "status: $(dmsetup status smoke-thin2)"
umount /tmp/m1 /tmp/m2
dmsetup remove smoke-thin1
dmsetup message smoke-pool 0 "delete 1"
# Removes smoke-thin2 (still active) and the loop device of the metadata.
"$here/../devmapper-pool.sh" remove smoke-pool
[ -z "$(losetup -n -l)" ] || { echo "smoke: loop devices left behind" >&2; exit 1; }
step "ok"
