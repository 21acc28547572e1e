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

# Python packages used as independent test peers (e.g. the official
# Prometheus parser), in a venv the tests find through AGENTRT_TEST_PYTHON.
if [ ! -x target/test-venv/bin/python ]; then
    mkdir -p target
    python3 -m venv target/test-venv
fi
target/test-venv/bin/pip install --quiet --disable-pip-version-check -r tests/peers/requirements.txt
export AGENTRT_TEST_PYTHON="$PWD/target/test-venv/bin/python"

echo "== fmt"
cargo fmt --check

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo nextest run --workspace --locked --profile ci
