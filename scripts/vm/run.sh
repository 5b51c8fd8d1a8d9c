#!/usr/bin/env bash
# Boots the Debian kernel under QEMU (software emulation: TCG), runs one command inside, powers off. The
# command runs in the host's checkout path (the host's / is the guest's root, read-only under a tmpfs
# overlay: every write lands in guest memory and vanishes at power-off), as root, with the host's PATH.
# Its output streams to this script's stdout; this script exits with the command's exit status.
#
#   scripts/vm/run.sh [--disk SIZE]... [--image PATH:SIZE]... [--state DIR] [--mem MiB] [--smp N]
#                     [--timeout SECONDS] [--cut-after SECONDS] [--expect-cut] [--keep] -- COMMAND [ARG...]
#
#   --disk SIZE   a sparse raw file of that size (truncate(1) sizes: 4G, 512M) attached as a virtio disk:
#                 /dev/vda, /dev/vdb... in order; the job sees their names in STRATA_VM_DISKS. Deleted after.
#   --image PATH:SIZE  a disk that persists across runs: the raw file PATH (created sparse with SIZE if it
#                 does not exist), attached after the --disk ones in the order given, kept after the run
#                 (the power-cut harness reboots on the same images: scripts/vm/power-cuts.sh)
#   --state DIR   the host directory DIR, read-write in the guest at the same path (virtio-9p, uncached: a
#                 write the guest made is on the host when its write() returns, whatever happens next)
#   --cut-after S kill QEMU (SIGKILL: a power cut, nothing flushed) S seconds after it started; exit 137
#   --expect-cut  a guest that stops without reporting a status (the job cut its own power with
#                 `echo b > /proc/sysrq-trigger`) exits 125 with one line, not the kernel console
#   --mem MiB     guest memory (default $STRATA_VM_MEM or 3072)
#   --smp N       guest CPUs (default $STRATA_VM_SMP or 2)
#   --timeout S   power the guest off after S seconds (default $STRATA_VM_TIMEOUT or 3600); exit 124
#   --keep        keep the run's directory (job, output, kernel console) and print its path
#
# Exit status: the command's; 124 on timeout; 125 when the guest stopped without reporting a status (the
# kernel console is printed then, unless --expect-cut); 137 when --cut-after cut the power. The environment passed in: PATH, LANG, TERM, CI, and every STRATA_*,
# VITEST_*, NODE_OPTIONS, DM_DISABLE_UDEV=1 (no udev in the guest), STRATA_VM=1, HOME=/root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

disks=() images=() state= cut= expectcut=0 mem=${STRATA_VM_MEM:-3072} smp=${STRATA_VM_SMP:-2} timeout=${STRATA_VM_TIMEOUT:-3600} keep=0
usage="usage: $0 [--disk SIZE]... [--image PATH:SIZE]... [--state DIR] [--mem MiB] [--smp N] [--timeout S] [--cut-after S] [--expect-cut] [--keep] -- COMMAND [ARG...]"
while [ $# -gt 0 ]; do
  case "$1" in
    --disk) disks+=("$2"); shift 2 ;;
    --image) images+=("$2"); shift 2 ;;
    --state) state=$(cd "$2" && pwd); shift 2 ;;
    --cut-after) cut=$2; shift 2 ;;
    --expect-cut) expectcut=1; shift ;;
    --mem) mem=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --) shift; break ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "vm: no command (usage: $0 [options] -- COMMAND [ARG...])" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || { echo "vm: qemu-system-x86_64 missing: run scripts/vm/setup.sh" >&2; exit 2; }

ver=$(vm_kernel_version)
initrd=$("$here/build-initramfs.sh" "$ver")

# The run's directory: the share the guest writes its status to (small: 9p writes are slow), the job, the
# output and console files QEMU writes, the disk images.
run=$(mktemp -d /tmp/strata-vm.XXXXXX)
share="$run/share"
mkdir -p "$share"
qpid=
finish() {
  [ -n "$qpid" ] && kill "$qpid" 2>/dev/null || true
  rm -f "$run"/disk*.img
  if [ "$keep" = 1 ]; then echo "vm: run directory $run" >&2; else rm -rf "$run"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

{
  echo "set -e"
  printf 'cd %q\n' "$PWD"
  printf 'export HOME=/root STRATA_VM=1 DM_DISABLE_UDEV=1 PATH=%q\n' "$PATH"
  while IFS='=' read -r name _; do
    case "$name" in
      LANG|TERM|CI|NODE_OPTIONS|STRATA_*|VITEST_*) printf 'export %s=%q\n' "$name" "${!name}" ;;
    esac
  done < <(env | grep -E '^[A-Za-z_][A-Za-z0-9_]*=' )
  letters=abcdefghijklmnop devs=()
  for i in $(seq 0 $((${#disks[@]} + ${#images[@]} - 1))); do devs+=("/dev/vd${letters:$i:1}"); done
  printf 'export STRATA_VM_DISKS=%q\n' "${devs[*]:-}"
  echo "set +e"
  printf 'exec'; printf ' %q' "$@"; echo
} > "$share/job.sh"

drives=()
for i in "${!disks[@]}"; do
  truncate -s "${disks[$i]}" "$run/disk$i.img"
  drives+=(-drive "file=$run/disk$i.img,format=raw,if=virtio,cache=unsafe,discard=unmap")
done
# Persistent images: cache=unsafe too (the host's page cache holds what QEMU wrote; the host does not crash,
# only the guest does, so what the guest had sent to its disk survives and what it had not is lost).
for img in "${images[@]}"; do
  path=${img%:*} size=${img##*:}
  [ "$path" != "$img" ] || { echo "vm: --image wants PATH:SIZE, got $img" >&2; exit 2; }
  [ -e "$path" ] || truncate -s "$size" "$path"
  drives+=(-drive "file=$path,format=raw,if=virtio,cache=unsafe,discard=unmap")
done
statefs=()
append="console=ttyS1 quiet panic=-1 strata.share=$share"
# A job whose directory is under /tmp (a CI checkout there): the guest mounts a fresh tmpfs on /tmp, so init.sh
# binds that directory back from the host's root under it.
case "$PWD/" in /tmp/*) append+=" strata.cwd=$PWD" ;; esac
if [ -n "$state" ]; then
  statefs=(-virtfs "local,path=$state,mount_tag=vmstate,security_model=passthrough,multidevs=remap")
  append+=" strata.state=$state"
fi

: > "$run/output"
qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp "$smp" -m "$mem" \
  -nodefaults -no-user-config -display none -no-reboot \
  -kernel "/boot/vmlinuz-$ver" -initrd "$initrd" \
  -append "$append" \
  -serial "file:$run/output" -serial "file:$run/console" \
  -virtfs "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap" \
  -virtfs "local,path=$share,mount_tag=vmshare,security_model=passthrough,multidevs=remap" \
  "${statefs[@]}" "${drives[@]}" &
qpid=$!
tail -n +1 -f --pid="$qpid" "$run/output" &
tpid=$!
# The watchdog polls (a plain `sleep $timeout` would outlive the run holding this script's stdout open).
(
  start=$SECONDS
  while kill -0 "$qpid" 2>/dev/null; do
    if [ -n "$cut" ] && [ $((SECONDS - start)) -ge "$cut" ]; then kill -KILL "$qpid" 2>/dev/null && touch "$run/cut"; exit; fi
    if [ $((SECONDS - start)) -ge "$timeout" ]; then kill "$qpid" 2>/dev/null && touch "$run/timed-out"; exit; fi
    sleep 1
  done
) </dev/null >/dev/null 2>&1 &
wpid=$!
wait "$qpid" || true
qpid=
wait "$tpid" 2>/dev/null || true
kill "$wpid" 2>/dev/null || true
wait "$wpid" 2>/dev/null || true
if [ -f "$run/timed-out" ]; then echo "vm: timed out after ${timeout}s" >&2; exit 124; fi
if [ -f "$run/cut" ]; then echo "vm: power cut (QEMU killed) after ${cut}s" >&2; exit 137; fi
if [ ! -f "$share/rc" ] && [ "$expectcut" = 1 ]; then echo "vm: the guest stopped without a status (its power was cut)" >&2; exit 125; fi
if [ ! -f "$share/rc" ]; then
  echo "vm: the guest stopped without reporting an exit status; kernel console:" >&2
  tail -n 40 "$run/console" >&2
  exit 125
fi
exit "$(cat "$share/rc")"
