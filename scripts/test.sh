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

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo nextest run --workspace --locked --profile ci
