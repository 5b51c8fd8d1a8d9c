#!/usr/bin/env bash
# Builds Strata's native parts into native/bin (gitignored), with gcc and Debian's headers only (no node-gyp,
# no download): the idmapped-mount helper, syncfs(2) for Node (strata-syncfs.node), and the N-API binding of
# libfuse 3 that src/fuse serves with (libfuse3-dev; Node's own headers, which the nodejs package installs beside
# the binary). scripts/setup.sh runs it; run it alone in a fresh worktree.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p native/bin
gcc -O2 -Wall -Wextra -o native/bin/strata-idmap-mount native/idmap-mount.c
node_include="$(dirname "$(readlink -f "$(command -v node)")")/../include/node"
# shellcheck disable=SC2046 # pkg-config's words are separate arguments
gcc -O2 -Wall -Wextra -shared -fPIC -I"$node_include" $(pkg-config --cflags fuse3) \
  -o native/bin/strata-fuse3.node native/fuse3-napi.c $(pkg-config --libs fuse3)
gcc -O2 -Wall -Wextra -shared -fPIC -I"$node_include" -o native/bin/strata-syncfs.node native/syncfs-napi.c
