#!/usr/bin/env bash
# Runs every test: unit tests, and the wire tests that start real `eddy serve` processes and
# drive them with tokio-postgres, psql and psycopg (sqllogictest suites in both protocols,
# the SIGKILL crash test, cancellation, hostile input). Ends with one line totalling all
# test binaries: "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}"
scripts/setup.sh
# The ONNX Runtime library setup.sh installed. The binary also looks in the checkout it was
# built from, but a target dir shared between checkouts may hold a build from another one.
if [ -z "${EDDY_ORT_LIB:-}" ]; then
  for lib in "$PWD"/.tools/onnx/onnxruntime/capi/libonnxruntime.so.*; do
    [ -f "$lib" ] && export EDDY_ORT_LIB="$lib"
  done
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# Into a file, not a pipe: a process a test leaves behind (a server whose stderr it
# inherited) then cannot keep this script waiting for the pipe to close.
cargo test --workspace "$@" > "$log" 2>&1 || status=$?
cat "$log"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit $status
