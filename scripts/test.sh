#!/usr/bin/env bash
# Runs every test: unit tests, and the wire tests that start real `eddy serve` processes and
# drive them with tokio-postgres, psql and psycopg (sqllogictest suites in both protocols,
# the SIGKILL crash test, cancellation, hostile input).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}"
scripts/setup.sh
cargo test --workspace "$@"
