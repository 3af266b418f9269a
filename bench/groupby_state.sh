#!/usr/bin/env bash
# A GROUP BY over more distinct keys than the state cache holds (issue 14): a datagen source
# of $ROWS events with distinct ids, `SELECT id, count(*), sum(v) ... GROUP BY id`, on a real
# `eddy serve` (release build) with `state_cache = $CACHE`. Prints the server's peak resident
# memory (VmHWM), its CPU seconds and the wall time until every event is counted, and checks
# that the view holds one row per id. Run it with CACHE=16GB for the all-in-memory reference.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-10000000}
CACHE=${CACHE:-64MB}
EDDY=${EDDY:-${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}/release/eddy}
WORK=$(mktemp -d /tmp/eddy-groupby.XXXXXX)
PORT=${PORT:-54411}
cleanup() {
  [ -n "${EDDY_PID:-}" ] && kill "$EDDY_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
EDDY_STATE_CACHE=$CACHE "$EDDY" serve --data-dir "$WORK/eddy" --pg-listen 127.0.0.1:$PORT \
  --http-listen 127.0.0.1:$((PORT + 1)) > "$WORK/eddy.log" 2>&1 &
EDDY_PID=$!
for _ in $(seq 100); do grep -q 'eddy ready' "$WORK/eddy.log" && break; sleep 0.1; done
q() { psql -h 127.0.0.1 -p $PORT -U eddy -d eddy -At -c "$1"; }
start=$(date +%s.%N)
q "CREATE SOURCE ev (id bigint NOT NULL, v int) WITH (connector = 'datagen', rows = '$ROWS',
     rows_per_second = '0', fields.id.kind = 'sequence', fields.v.min = '0', fields.v.max = '100')" >/dev/null
q "CREATE MATERIALIZED VIEW g AS SELECT id, count(*) AS n, sum(v) AS s FROM ev GROUP BY id" >/dev/null
# Every event counted: the view has written a row for each id (its "rows" counter).
while :; do
  written=$(q "SHOW MATERIALIZED VIEWS" | awk -F'|' '$1 == "g" { print $5 }')
  [ "${written:-0}" -ge "$ROWS" ] && break
  kill -0 "$EDDY_PID" || { echo "eddy died"; tail "$WORK/eddy.log"; exit 1; }
  sleep 0.5
done
end=$(date +%s.%N)
read -r utime stime < <(awk '{ print $14, $15 }' /proc/$EDDY_PID/stat)
hz=$(getconf CLK_TCK)
peak=$(awk '/VmHWM/ { print $2 }' /proc/$EDDY_PID/status)
rows=$(q "SELECT count(*) FROM g")
echo "state_cache=$CACHE rows=$ROWS view_rows=$rows peak_rss_mb=$((peak / 1024)) \
cpu_s=$(echo "($utime + $stime) / $hz" | bc -l | cut -c1-6) wall_s=$(echo "$end - $start" | bc -l | cut -c1-6)"
[ "$rows" -eq "$ROWS" ] || { echo "expected $ROWS rows"; exit 1; }
