#!/usr/bin/env bash
# Creates (or removes) a device-mapper thin pool for the devmapper snapshotter, as containerd's docs do by
# hand: creating the pool is the operator's job, the snapshotter only uses it (config `pool_name`). For tests
# and for trying the snapshotter; production pools belong on real disks (or LVM thin pools).
#
#   scripts/devmapper-pool.sh create NAME [--data PATH] [--meta PATH] [--size SIZE] [--meta-size SIZE] [--dir DIR]
#   scripts/devmapper-pool.sh remove NAME
#   scripts/devmapper-pool.sh status NAME
#
# create: PATH may be a block device (e.g. a spare disk) or a file; a missing or regular file is created
#   sparse (SIZE for data, default 10G; META_SIZE for metadata, default 256M) and attached to a loop device.
#   Without --data/--meta the files are DIR/NAME-data and DIR/NAME-meta (DIR default /var/lib/strata-dm).
#   The metadata device's first block is zeroed (a fresh pool), the pool's block size is 64 KiB (128
#   sectors), the low-water mark 32768 blocks, and new blocks are not zeroed (skip_block_zeroing: a thin
#   device's filesystem never reads a block it did not write), as containerd's example does.
# remove: the pool and every thin device still active on it, then the loop devices backing it (not the files).
# Needs root, dmsetup (dmsetup), losetup (mount) and the dm-thin-pool module (loaded here).
set -euo pipefail
export DM_DISABLE_UDEV=${DM_DISABLE_UDEV:-1}

usage() { sed -n '6,9p' "$0" | sed 's/^# *//' >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 name=$2; shift 2

# A block device for PATH: itself if it is one, else a loop device over the file (created sparse if missing).
attach() {
  local path=$1 size=$2
  if [ -b "$path" ]; then echo "$path"; return; fi
  if [ ! -e "$path" ]; then mkdir -p "$(dirname "$path")"; truncate -s "$size" "$path"; fi
  losetup --find --show "$path"
}

case "$cmd" in
  create)
    data= meta= size=10G metasize=256M dir=/var/lib/strata-dm
    while [ $# -gt 0 ]; do
      case "$1" in
        --data) data=$2; shift 2 ;;
        --meta) meta=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --meta-size) metasize=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        *) usage ;;
      esac
    done
    modprobe dm-thin-pool 2>/dev/null || true
    modprobe loop 2>/dev/null || true
    if dmsetup info "$name" >/dev/null 2>&1; then echo "devmapper-pool: $name exists already" >&2; exit 1; fi
    datadev=$(attach "${data:-$dir/$name-data}" "$size")
    metadev=$(attach "${meta:-$dir/$name-meta}" "$metasize")
    dd if=/dev/zero of="$metadev" bs=4096 count=1 conv=notrunc status=none
    sectors=$(blockdev --getsz "$datadev")
    dmsetup create "$name" --table "0 $sectors thin-pool $metadev $datadev 128 32768 1 skip_block_zeroing"
    [ -e "/dev/mapper/$name" ] || dmsetup mknodes "$name"
    echo "devmapper-pool: /dev/mapper/$name (data $datadev, metadata $metadev, $sectors sectors)"
    ;;
  remove)
    [ $# -eq 0 ] || usage
    table=$(dmsetup table "$name")
    # Thin devices of this pool still active: their table names the pool's major:minor.
    pooldev=$(dmsetup info -c --noheadings -o major,minor "$name" | tr -d ' ')
    for dev in $(dmsetup table --target thin 2>/dev/null | awk -v p="$pooldev" '$5 == p {sub(/:$/, "", $1); print $1}'); do
      dmsetup remove --force "$dev"
    done
    dmsetup remove "$name"
    for d in $(echo "$table" | awk '{print $4, $5}'); do
      case "$d" in
        /dev/loop*) losetup -d "$d" ;;
        [0-9]*:[0-9]*)
          loop=$(losetup -l -n -O NAME,MAJ:MIN | awk -v mm="$d" '$2 == mm {print $1}')
          if [ -n "$loop" ]; then losetup -d "$loop"; fi ;;
      esac
    done
    ;;
  status)
    dmsetup status "$name"
    ;;
  *) usage ;;
esac
