# Shared by the VM tier's scripts (sourced): the kernel version, the cache directory.

# Where built initramfs images live (one per kernel version and init script).
STRATA_VM_CACHE=${STRATA_VM_CACHE:-/var/cache/strata-vm}

# The kernel the guest boots: $STRATA_VM_KERNEL, else the newest version with both /lib/modules/<ver> and
# /boot/vmlinuz-<ver> (kernel, modules and the guest's modprobe then match).
vm_kernel_version() {
  if [ -n "${STRATA_VM_KERNEL:-}" ]; then echo "$STRATA_VM_KERNEL"; return; fi
  local v best=
  for v in $(ls /lib/modules 2>/dev/null | sort -V); do
    [ -f "/boot/vmlinuz-$v" ] && best=$v
  done
  [ -n "$best" ] || { echo "vm: no kernel with /boot/vmlinuz-<ver> and /lib/modules/<ver>: run scripts/vm/setup.sh" >&2; return 1; }
  echo "$best"
}
