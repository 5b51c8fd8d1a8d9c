#!/usr/bin/env bash
# Sets up a checkout: the Debian packages the tests use (as root, only those missing), the npm dependencies
# (better-sqlite3 compiles from source: about a minute and a half), and the build.
set -euo pipefail
cd "$(dirname "$0")/.."

# ctr and containerd are the interop peers of the tests and benchmarks; docker-registry serves images on
# loopback for the pull/push tests; skopeo copies test images into it. golang-go and containerd's Go sources
# build the Go interop tier (test/interop-go: containerd's client library and test suites, offline, GOPATH mode).
# prometheus (with promtool) scrapes the metrics endpoint in test/metrics; systemd's systemd-analyze verifies
# contrib/strata.service; tmux is the pseudo-terminal of the progress display tests (test/cli/progress-tty).
# gcc builds native/idmap-mount.c, the idmapped-mount helper (open_tree/mount_setattr/move_mount, which Node lacks),
# and native/fuse3-napi.c, Strata's N-API binding of libfuse 3 (libfuse3-dev; Node's own headers, which the nodejs
# package installs beside the binary: no node-gyp, no download). fuse3 brings fusermount3 and /etc/fuse.conf;
# libfuse2 is for fuse-native, the npm binding bench/fuse.ts compares it with (docs/fuse.md).
debs=(containerd runc busybox-static btrfs-progs erofs-utils tar docker-registry skopeo python3 golang-go golang-github-containerd-containerd-dev golang-github-containerd-stargz-snapshotter-dev fuse3 libfuse2 libfuse3-dev pkg-config prometheus systemd tmux gcc libc6-dev)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages (${missing[*]}); install them as root" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bash scripts/build-native.sh

npm ci --no-audit --no-fund
npm run build
