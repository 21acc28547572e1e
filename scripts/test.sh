#!/usr/bin/env bash
# Runs the whole agentrt test suite on a fresh machine: installs what the
# tests need, lints, then runs every test with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the suite needs. The Rust toolchain is pinned in rust-toolchain.toml.
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

# The sandbox tests run real sandboxes: they need root, mkfs.ext4 and mount
# (loop devices), and python3 and bash in the host's /usr, which sandboxes
# see read-only. The cgroup v2 test boots a VM (scripts/cgroup-v2-vm.sh):
# QEMU, a Debian kernel with 9p modules, and a static busybox.
missing=""
for tool in mkfs.ext4:e2fsprogs mount:mount /usr/bin/python3:python3 bash:bash qemu-system-x86_64:qemu-system-x86 /bin/busybox:busybox-static; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing="$missing ${tool##*:}"
done
if ! find /boot -maxdepth 1 -name 'vmlinuz-*-amd64' ! -name '*cloud*' | grep -q .; then
    missing="$missing linux-image-amd64"
fi
if [ -n "$missing" ]; then
    echo "installing$missing"
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

# Python packages used as independent test peers (e.g. the official
# Prometheus parser), in a venv the tests find through AGENTRT_TEST_PYTHON.
if [ ! -x target/test-venv/bin/python ]; then
    mkdir -p target
    python3 -m venv target/test-venv
fi
target/test-venv/bin/pip install --quiet --disable-pip-version-check -r tests/peers/requirements.txt
export AGENTRT_TEST_PYTHON="$PWD/target/test-venv/bin/python"

# The official openai and MCP SDKs for the sandbox's Python (the host's
# /usr/bin/python3, which sandboxes see): wheels for its version, copied into
# a sandbox's workspace by the tests that run them inside one.
SANDBOX_PY=$(/usr/bin/python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
SANDBOX_PINS="$(grep -E '^(openai|mcp)==' tests/peers/requirements.txt | tr '\n' ' ')"
if [ "$(cat "target/sandbox-py/$SANDBOX_PY/.pins" 2>/dev/null)" != "$SANDBOX_PINS" ]; then
    rm -rf "target/sandbox-py/$SANDBOX_PY"
    # shellcheck disable=SC2086
    target/test-venv/bin/pip install --quiet --disable-pip-version-check --target "target/sandbox-py/$SANDBOX_PY" \
        --python-version "$SANDBOX_PY" --only-binary=:all: --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        $SANDBOX_PINS
    echo "$SANDBOX_PINS" > "target/sandbox-py/$SANDBOX_PY/.pins"
fi
export AGENTRT_TEST_SANDBOX_PY="$PWD/target/sandbox-py/$SANDBOX_PY"

# A throwaway PostgreSQL server (Debian's packages): the store suite runs
# on it as well as on SQLite.
AGENTRT_TEST_POSTGRES="$(./scripts/pg-test-server.sh)"
export AGENTRT_TEST_POSTGRES

# The sandbox agent as one static executable, which a test runs where
# there is no C library.
AGENTRT_TEST_STATIC_AGENT="$(./scripts/build-static-agent.sh)"
export AGENTRT_TEST_STATIC_AGENT

echo "== fmt"
cargo fmt --check

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo nextest run --workspace --locked --profile ci
