#!/usr/bin/env bash
# Installs what the VM tier needs from Debian (as root, only the packages missing): QEMU (TCG: this tier
# never needs /dev/kvm), a Debian kernel with its modules (device-mapper thin, overlay, 9p, virtio), busybox
# for the initramfs, dmsetup and thin-provisioning-tools for devmapper pools, e2fsprogs/xfsprogs for the
# thin devices' filesystems, qemu-utils for disk images; and zfs (the module built by dkms for the guest's
# kernel: linux-headers-<ver>, dkms, zfs-dkms from Debian's contrib component, zfsutils-linux). Idempotent: a
# second run installs nothing. STRATA_VM_NO_ZFS=1 leaves zfs out (its module build takes ~15 minutes once).
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

# zfs for the zfs snapshotter's tests: the module must be built for the guest's kernel (not the host's).
if [ "${STRATA_VM_NO_ZFS:-}" != 1 ]; then
  zdebs=("linux-headers-$ver" dkms zfs-dkms zfsutils-linux)
  zmissing=()
  for p in "${zdebs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || zmissing+=("$p")
  done
  zko() { find "/lib/modules/$ver" -name 'zfs.ko*' 2>/dev/null | grep -q .; }
  if [ ${#zmissing[@]} -gt 0 ] || ! zko; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "vm/setup: zfs for kernel $ver is missing (${zmissing[*]:-the module}); run this as root" >&2
      exit 1
    fi
    # zfs-dkms is in Debian's contrib component: add it to the sources that list main without it.
    changed=0
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      if grep -Eq '^Components:.*\bmain\b' "$f" && ! grep -Eq '^Components:.*\bcontrib\b' "$f"; then
        sed -i -E '/^Components:/{/\bcontrib\b/!s/\bmain\b/main contrib/}' "$f"
        changed=1
      fi
    done
    if [ -f /etc/apt/sources.list ] && grep -Eq '^deb .* main' /etc/apt/sources.list && ! grep -Eq '^deb .* contrib' /etc/apt/sources.list; then
      sed -i -E '/^deb /{/ contrib/!s/ main( |$)/ main contrib\1/}' /etc/apt/sources.list
      changed=1
    fi
    if [ $changed = 1 ] || [ ${#zmissing[@]} -gt 0 ]; then apt-get update -qq; fi
    if [ ${#zmissing[@]} -gt 0 ]; then
      echo "vm/setup: installing ${zmissing[*]} (the zfs module build takes about 15 minutes on 2 busy cores)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${zmissing[@]}" >/dev/null
    fi
    # dkms builds for the running kernel's version and for the installed headers; make sure of the guest's.
    if ! zko; then
      zver=$(dpkg-query -W -f='${Version}' zfs-dkms | sed -E 's/-[^-]*$//')
      dkms install -m zfs -v "$zver" -k "$ver"
    fi
    zko || { echo "vm/setup: no zfs module for kernel $ver after installing zfs-dkms" >&2; exit 1; }
  fi
fi
echo "vm/setup: ready (kernel $ver${STRATA_VM_NO_ZFS:+, without zfs})"
