#!/usr/bin/env bash
# Builds the guest's initramfs for a kernel version (default: vm_kernel_version) and prints its path. Cached:
# the image is named by the kernel version and a hash of this script and init.sh, so it is rebuilt only when
# either changes or the kernel does.
#
# Contents: busybox-static (as /bin/busybox plus applet links), /init (scripts/vm/init.sh), and the modules
# the guest needs before it can reach its root, loaded by insmod in dependency order (the order
# `modprobe --show-depends` gives): virtio PCI, virtio-9p, overlay, virtio-blk. Everything else (dm-thin-pool,
# loop, ext4...) is modprobe'd later from the host's /lib/modules, seen through 9p.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
ver=${1:-$(vm_kernel_version)}
key=$(cat "$here/build-initramfs.sh" "$here/init.sh" | sha256sum | cut -c1-12)
out="$STRATA_VM_CACHE/initramfs-$ver-$key.img"
if [ -f "$out" ]; then echo "$out"; exit 0; fi

[ -d "/lib/modules/$ver" ] || { echo "vm: no /lib/modules/$ver" >&2; exit 1; }
bb=$(command -v busybox || true)
[ -n "$bb" ] && file -L "$bb" 2>/dev/null | grep -q 'statically linked' || bb=/bin/busybox
[ -x "$bb" ] || { echo "vm: busybox-static is not installed" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,dev,proc,sys,mnt/lower,mnt/rw,newroot,lib/modules}
cp "$bb" "$work/bin/busybox"
for a in $("$work/bin/busybox" --list); do [ -e "$work/bin/$a" ] || ln -s busybox "$work/bin/$a"; done
cp "$here/init.sh" "$work/init"
chmod 755 "$work/init"

# Modules in load order: each wanted module's dependencies first, each file once.
: > "$work/lib/modules/order"
for m in virtio_pci 9p 9pnet_virtio overlay virtio_blk virtio_console; do
  modprobe -S "$ver" --show-depends "$m" | while read -r kind path _; do
    [ "$kind" = insmod ] || continue # 'builtin <name>': nothing to load
    name=$(basename "$path"); name=${name%%.ko*}
    grep -qx "$name" "$work/lib/modules/order" && continue
    case "$path" in
      *.ko.xz) xz -dc "$path" > "$work/lib/modules/$name.ko" ;;
      *.ko.zst) zstd -qdc "$path" > "$work/lib/modules/$name.ko" ;;
      *.ko.gz) gzip -dc "$path" > "$work/lib/modules/$name.ko" ;;
      *) cp "$path" "$work/lib/modules/$name.ko" ;;
    esac
    echo "$name" >> "$work/lib/modules/order"
  done
done

mkdir -p "$STRATA_VM_CACHE"
tmp="$out.tmp.$$"
(cd "$work" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$tmp"
mv "$tmp" "$out"
echo "$out"
