#!/usr/bin/env bash
# Installs what the VM tier needs from Debian (as root, only the packages missing): QEMU (TCG: this tier
# never needs /dev/kvm), a Debian kernel with its modules (device-mapper thin, overlay, 9p, virtio), busybox
# for the initramfs, dmsetup and thin-provisioning-tools for devmapper pools, e2fsprogs/xfsprogs for the
# thin devices' filesystems, qemu-utils for disk images. Idempotent: a second run installs nothing.
set -euo pipefail

debs=(qemu-system-x86 qemu-utils linux-image-amd64 busybox-static dmsetup thin-provisioning-tools e2fsprogs xfsprogs cpio kmod)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "vm/setup: missing Debian packages (${missing[*]}); install them as root" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The kernel the guest boots: the newest of /lib/modules that has a vmlinuz in /boot.
ver=$(ls /lib/modules | sort -V | while read -r v; do [ -f "/boot/vmlinuz-$v" ] && echo "$v"; done | tail -n1)
[ -n "$ver" ] || { echo "vm/setup: no kernel in /boot with modules in /lib/modules" >&2; exit 1; }
echo "vm/setup: ready (kernel $ver)"
