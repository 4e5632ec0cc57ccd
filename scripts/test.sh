#!/usr/bin/env bash
# The project's test command: builds every binary (the real-process suites in tests/ drive
# target/debug/gateway), then runs every test of the workspace. Extra arguments go to
# `cargo test`, e.g. `scripts/test.sh -p gateway-tests -- election`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --workspace --bins
cargo test --workspace "$@"
