#!/usr/bin/env bash
# Point lookups by primary key over the wire, Eddy vs PostgreSQL 15 on the same machine:
#   pgbench -n -M prepared -f lookup.sql -c 16 -j 2 -T $SECS  against a 1M-row table,
# plus single-connection latency. Median of $RUNS runs each; p50/p99 from pgbench's
# per-transaction log. Needs a release build (cargo build --release -p eddy) and the
# postgresql package (scripts/setup.sh installs the client; this script uses the server).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECS:-20}
ROWS=${ROWS:-1000000}
EDDY=${EDDY:-${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}/release/eddy}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
WORK=$(mktemp -d /tmp/eddy-bench.XXXXXX)
chmod 777 "$WORK"
EDDY_PORT=54401 PG_PORT=54402
cleanup() {
  [ -n "${EDDY_PID:-}" ] && kill "$EDDY_PID" 2>/dev/null || true
  su postgres -c "$PGBIN/pg_ctl -D $WORK/pg -m immediate stop" >/dev/null 2>&1 || true
}
trap cleanup EXIT

printf '\\set id random(1, %d)\nSELECT v FROM kv WHERE id = :id;\n' "$ROWS" > "$WORK/lookup.sql"

echo "== starting PostgreSQL 15 and Eddy"
su postgres -c "$PGBIN/initdb -D $WORK/pg -A trust -U postgres" >/dev/null
su postgres -c "$PGBIN/pg_ctl -D $WORK/pg -o '-p $PG_PORT -k $WORK -c max_connections=100' -l $WORK/pg.log -w start" >/dev/null
"$EDDY" serve --data-dir "$WORK/eddy" --pg-listen 127.0.0.1:$EDDY_PORT --http-listen 127.0.0.1:54403 > "$WORK/eddy.log" 2>&1 &
EDDY_PID=$!
for _ in $(seq 100); do grep -q 'eddy ready' "$WORK/eddy.log" && break; sleep 0.1; done
grep -q 'eddy ready' "$WORK/eddy.log" || { cat "$WORK/eddy.log"; exit 1; }

PG="psql -X -q -h 127.0.0.1 -p $PG_PORT -U postgres -d postgres"
ED="psql -X -q -h 127.0.0.1 -p $EDDY_PORT -U eddy -d eddy"
echo "== loading $ROWS rows into each"
$PG -c "CREATE TABLE kv (id int PRIMARY KEY, v text)" \
    -c "INSERT INTO kv SELECT g, 'value-' || g FROM generate_series(1, $ROWS) g" -c "VACUUM ANALYZE kv"
$ED -c "CREATE TABLE kv (id int PRIMARY KEY, v text)"
step=100000
for ((lo = 1; lo <= ROWS; lo += step)); do
  hi=$((lo + step - 1)); [ $hi -gt "$ROWS" ] && hi=$ROWS
  $ED -c "INSERT INTO kv SELECT value, 'value-' || value FROM generate_series($lo, $hi)"
done
$PG -At -c "SELECT count(*) FROM kv"
$ED -At -c "SELECT count(*) FROM kv"

# run NAME PORT USER DB CLIENTS THREADS -> prints "tps p50_ms p99_ms"
run() {
  local dir="$WORK/log-$1-$5-$RANDOM"; mkdir -p "$dir"; chmod 777 "$dir"
  local out
  out=$(cd "$dir" && pgbench -n -M prepared -f "$WORK/lookup.sql" -c "$5" -j "$6" -T "$SECS" \
        -h 127.0.0.1 -p "$2" -U "$3" -l "$4" 2>&1)
  local tps
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  cat "$dir"/pgbench_log.* | awk '{print $3}' | sort -n > "$dir/lat"
  local n; n=$(wc -l < "$dir/lat")
  local p50 p99
  p50=$(sed -n "$(( (n * 50 + 99) / 100 ))p" "$dir/lat")
  p99=$(sed -n "$(( (n * 99 + 99) / 100 ))p" "$dir/lat")
  rm -rf "$dir"
  awk -v t="$tps" -v a="$p50" -v b="$p99" 'BEGIN { printf "%.0f %.3f %.3f\n", t, a / 1000, b / 1000 }'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

report() { # label clients threads
  local e_t=() e_50=() e_99=() p_t=() p_50=() p_99=()
  for i in $(seq "$RUNS"); do
    read -r t a b < <(run eddy $EDDY_PORT eddy eddy "$2" "$3"); e_t+=("$t"); e_50+=("$a"); e_99+=("$b")
    read -r t a b < <(run pg $PG_PORT postgres postgres "$2" "$3"); p_t+=("$t"); p_50+=("$a"); p_99+=("$b")
    echo "   run $i: eddy ${e_t[-1]} tps (p50 ${e_50[-1]} ms, p99 ${e_99[-1]} ms) | postgres ${p_t[-1]} tps (p50 ${p_50[-1]} ms, p99 ${p_99[-1]} ms)"
  done
  local et pt
  et=$(printf '%s\n' "${e_t[@]}" | median); pt=$(printf '%s\n' "${p_t[@]}" | median)
  echo "$1 median: eddy $et tps, p50 $(printf '%s\n' "${e_50[@]}" | median) ms, p99 $(printf '%s\n' "${e_99[@]}" | median) ms" \
       "| postgres $pt tps, p50 $(printf '%s\n' "${p_50[@]}" | median) ms, p99 $(printf '%s\n' "${p_99[@]}" | median) ms" \
       "| eddy/postgres tps = $(awk -v a="$et" -v b="$pt" 'BEGIN { printf "%.2f", a / b }')"
}

echo "== pgbench -M prepared, 16 clients, 2 threads, ${SECS}s, $RUNS runs (alternating)"
report "16 clients" 16 2
echo "== single connection"
report "1 client" 1 1
echo "== eddy storage counters"
curl -s http://127.0.0.1:54403/v1/storage || true
echo
