#!/bin/sh
# The guest's init, in two stages.
#
# Stage 1 (as /init of the initramfs, under busybox): load the modules the root needs (insmod, in the order
# build-initramfs.sh recorded), mount the host's / read-only over virtio-9p (tag hostroot) under an overlay
# whose upper layer is a tmpfs (so the guest writes anywhere, in its memory, and the host sees none of it),
# and switch_root into it, running this same file again as stage 2. switch_root, not chroot: the kernel's
# module auto-loading (request_module -> /sbin/modprobe) must see the new root.
#
# Stage 2 (the host's /bin/sh, inside the new root): fresh /proc /sys /dev /run /tmp, cgroup2, loopback up,
# the read-write share (tag vmshare) mounted at its host path (and the state directory, tag vmstate, if run.sh
# was given one), then the job ($share/job.sh, written by
# run.sh) with its output (a pipe, not a terminal) on the first serial port; its exit status goes to $share/rc, then power off
# (sysrq 'o': no init to tell, nothing to sync that matters).
if [ "$1" != stage2 ]; then
  export PATH=/bin
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev
  while read -r m; do
    insmod "/lib/modules/$m.ko" || echo "vm: insmod $m failed" > /dev/ttyS1
  done < /lib/modules/order
  fail() { echo "vm: $*" > /dev/ttyS1; echo o > /proc/sysrq-trigger; sleep 10; }
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /mnt/lower || fail "cannot mount the host root over 9p"
  mount -t tmpfs -o mode=0755 tmpfs /mnt/rw
  mkdir -p /mnt/rw/upper /mnt/rw/work
  mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay /newroot || fail "cannot mount the overlay root"
  cp /init /newroot/.strata-vm-init
  chmod 755 /newroot/.strata-vm-init
  umount /proc /sys
  mount --move /dev /newroot/dev
  exec switch_root /newroot /bin/sh /.strata-vm-init stage2
fi

# Stage 2.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
# The host's /tmp as the root shows it, kept reachable under /run before a fresh tmpfs hides it (see strata.cwd).
mkdir -p /run/host-tmp && mount --bind /tmp /run/host-tmp
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up 2>/dev/null
hostname strata-vm 2>/dev/null
share=$(sed -n 's/.*strata\.share=\([^ ]*\).*/\1/p' /proc/cmdline)
mkdir -p "$share"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmshare "$share"
# run.sh --state DIR: a read-write host directory at the same path (uncached: a write is on the host when it
# returns, so what the job logged there survives the job cutting its own power).
state=$(sed -n 's/.*strata\.state=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$state" ]; then
  mkdir -p "$state"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmstate "$state"
fi
# run.sh strata.cwd=DIR: the job's directory is under /tmp on the host (a checkout there): bind it back.
cwd=$(sed -n 's/.*strata\.cwd=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$cwd" ]; then
  mkdir -p "$cwd"
  mount --bind "/run/host-tmp/${cwd#/tmp/}" "$cwd" || echo "vm: cannot bind $cwd from the host's /tmp" > /dev/ttyS1
fi
stty -F /dev/ttyS0 -opost 2>/dev/null
rc=255
if [ -f "$share/job.sh" ]; then
  # Through a pipe: the job's output is not a terminal (no progress redraws over a slow serial line).
  { /bin/bash "$share/job.sh" < /dev/null; echo $? > /run/strata-vm-rc; } 2>&1 | cat > /dev/ttyS0
  rc=$(cat /run/strata-vm-rc 2>/dev/null || echo 255)
else
  echo "vm: no job in $share" > /dev/ttyS1
fi
echo "$rc" > "$share/rc.tmp" && mv "$share/rc.tmp" "$share/rc"
umount "$share"
echo o > /proc/sysrq-trigger
sleep 10
