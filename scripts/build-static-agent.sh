#!/usr/bin/env bash
# Builds agentrt-sandbox-agent as one static executable (glibc linked in,
# static-pie), for sandboxes whose root file system has no C library: a
# microVM's or gVisor's minimal rootfs, or a `rootfs` of the agent spec.
# Prints the binary's path. Usage: scripts/build-static-agent.sh [--debug]
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
flag=--release
if [ "${1:-}" = "--debug" ]; then
    profile=debug
    flag=
fi
# With --target given, RUSTFLAGS reach only the target's artifacts, not
# build scripts or proc-macros, which stay dynamic host programs.
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build $flag --locked --quiet --target "$target" -p agentrt-sandbox-agent >&2
echo "$PWD/target/$target/$profile/agentrt-sandbox-agent"
