#!/usr/bin/env bash
# The power-cut harness (docs/reliability.md, "Power cuts"): boots the guest N times on the same persistent
# virtio disks; each boot checks what the previous one left (when there is one), runs stratad doing real work
# on every target at once, and cuts its own power at a random moment (sysrq b: no sync, no unmount). A last
# boot checks, collects and runs `strata fsck`. Then prints what each target went through and exits 1 if
# anything committed was lost or torn, the daemon did not start, fsck found a violation, or the collection
# left something.
#
#   scripts/vm/power-cuts.sh [--cuts N] [--dir DIR] [--targets LIST] [--keep]
#
#   --cuts N        power cuts (default $STRATA_POWER_CUTS or 3)
#   --dir DIR       where the disk images, the ledger and the results live (default a new /var/tmp/strata-power.*;
#                   deleted after a successful run unless --keep)
#   --targets LIST  comma-separated, of content,overlayfs,native,btrfs,devmapper,zfs (default
#                   $STRATA_POWER_TARGETS or all but zfs, plus zfs when the zfs module is installed)
#   STRATA_POWER_CUT_MAX  the latest cut, in seconds into the work (default 30)
#   touch DIR/stop        ends the run after the current boot (then the final check)
#   STRATA_VM_TIMEOUT     the bound of one boot (default here 900 s)
#   STRATA_POWER_DEADLINE a time (seconds since the epoch) the whole run must end by: no boot runs past it,
#                         and reaching it fails the run (exit 124), saying so (scripts/vm/tier.sh sets it)
#
# Runs from the build (dist/): `npm run build` first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cuts=${STRATA_POWER_CUTS:-3} dir= keep=0 targets=${STRATA_POWER_TARGETS:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --cuts) cuts=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) sed -n '9,18p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
  esac
done
if [ -z "$targets" ]; then
  targets=content,overlayfs,native,btrfs,devmapper
  . "$here/common.sh"
  ver=$(vm_kernel_version)
  if [ -f "$repo/dist/src/snapshots/zfs/index.js" ] && modinfo -k "$ver" zfs >/dev/null 2>&1; then targets+=,zfs; fi
fi
[ -f "$repo/dist/test/vm/power/guest.js" ] || { echo "power-cuts: no build (dist/test/vm/power/guest.js): run npm run build" >&2; exit 2; }
if [ -z "$dir" ]; then dir=$(mktemp -d /var/tmp/strata-power.XXXXXX); fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
export STRATA_POWER_STATE=$dir STRATA_POWER_TARGETS=$targets STRATA_VM_TIMEOUT=${STRATA_VM_TIMEOUT:-900}
images=(--image "$dir/root.img:3G" --image "$dir/btrfs.img:2G" --image "$dir/dm-data.img:3G" --image "$dir/dm-meta.img:64M")
case ",$targets," in *,zfs,*) images+=(--image "$dir/zfs.img:2G") ;; esac
guest=(node "$repo/dist/test/vm/power/guest.js")

# What of a boot's output is shown (all of it is in DIR/boot-N.log): the harness's lines, findings, errors.
show='^power|FINDING|^vm:|rror'
# `strata fsck` on the host, of the root as the last boot left it: the images loop-mounted (ext4 replays its
# journal as the guest's mount would), the check, unmounted. A second per boot instead of half a minute of
# emulated node start.
mnt=$dir/mnt
printf 'version = 2\nroot = "%s"\nstate = "%s"\n[grpc]\naddress = "%s"\n' "$mnt/root" "$dir/fsck-state" "$dir/fsck-state/strata.sock" > "$dir/fsck.toml"
unmount_images() {
  mountpoint -q "$mnt/root/io.containerd.snapshotter.v1.btrfs" 2>/dev/null && umount "$mnt/root/io.containerd.snapshotter.v1.btrfs"
  mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
  return 0
}
trap unmount_images EXIT
hostfsck() {
  mkdir -p "$mnt"
  mount -o loop "$dir/root.img" "$mnt"
  mount -o loop "$dir/btrfs.img" "$mnt/root/io.containerd.snapshotter.v1.btrfs"
  STRATA_POWER_STATE=$dir node "${guest[@]:1}" hostfsck "$1" "$dir/fsck.toml" ${2:-} || failed=1
  umount "$mnt/root/io.containerd.snapshotter.v1.btrfs"
  umount "$mnt"
}

echo "power-cuts: $cuts cut(s), targets $targets, in $dir"
start=$SECONDS
failed=0
cd "$repo"
# The time a boot may take: STRATA_VM_TIMEOUT, or less if the deadline is nearer. Fails past the deadline.
boot_timeout() {
  local t=$STRATA_VM_TIMEOUT
  if [ -n "${STRATA_POWER_DEADLINE:-}" ]; then
    local rest=$((STRATA_POWER_DEADLINE - $(date +%s)))
    if [ "$rest" -lt 30 ]; then echo "power-cuts: FAILED: past the deadline (STRATA_POWER_DEADLINE) before boot $1" >&2; return 1; fi
    [ "$rest" -lt "$t" ] && t=$rest
  fi
  echo "$t"
}
done_cuts=0
for i in $(seq 1 "$cuts"); do
  done_cuts=$i
  b=$SECONDS
  t=$(boot_timeout "$i") || exit 124
  set +e
  "$here/run.sh" --timeout "$t" --state "$dir" "${images[@]}" --expect-cut -- "${guest[@]}" boot "$i" 2>&1 | tee "$dir/boot-$i.log" | grep --line-buffered -E "$show"
  rc=${PIPESTATUS[0]}
  set -e
  # 125: the guest stopped without a status, as the cut makes it. Anything else: it did not get to its cut.
  if [ "$rc" = 124 ]; then hostfsck "$i"; echo "power-cuts: FAILED: boot $i ran out of time" >&2; exit 124; fi
  if [ "$rc" != 125 ]; then echo "power-cuts: boot $i ended with status $rc instead of a power cut" >&2; failed=1; fi
  hostfsck "$i"
  echo "power-cuts: boot $i: $((SECONDS - b)) s"
  # A run stopped early on purpose (touch DIR/stop): the final check of what the cuts so far left.
  if [ -e "$dir/stop" ]; then echo "power-cuts: $dir/stop: stopping after $i cut(s)"; break; fi
done
b=$SECONDS
t=$(boot_timeout final) || exit 124
set +e
"$here/run.sh" --timeout "$t" --state "$dir" "${images[@]}" -- "${guest[@]}" final "$((done_cuts + 1))" 2>&1 | tee "$dir/final.log" | grep --line-buffered -E "$show"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || { echo "power-cuts: the final boot ended with status $rc" >&2; failed=1; }
hostfsck "$((done_cuts + 1))" final
echo "power-cuts: final boot: $((SECONDS - b)) s; all: $((SECONDS - start)) s"
node "${guest[@]:1}" summary || failed=1
if [ "$failed" = 0 ] && [ "$keep" = 0 ]; then rm -rf "$dir"; else echo "power-cuts: state, ledger and disk images kept in $dir"; fi
exit "$failed"
