#!/usr/bin/env bash
# Builds Eddy (release) and starts it on the embedded defaults: data in ./eddy-data,
# Postgres protocol on 127.0.0.1:5432, HTTP on 127.0.0.1:8080. Extra arguments go to
# `eddy serve` (for example --pg-listen 127.0.0.1:6432).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}"
scripts/setup.sh
exec cargo run --release -p eddy -- serve "$@"
