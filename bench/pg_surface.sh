#!/usr/bin/env bash
# Issue 16's benchmarks, side by side in one run on this machine: Eddy (release build),
# PostgreSQL 15 (synchronous commit, default settings) and redis-server.
#   lookup  pgbench -M prepared point SELECT by primary key on a 1M-row table, 16 clients,
#           against redis-benchmark GET (16 clients, unpipelined, 1M keys)
#   view    the same on a materialized view's key (GROUP BY over a table in PostgreSQL, over
#           a push source in Eddy)
#   insert  pgbench -M prepared single-row INSERT into a bigserial table, 16 clients
#   copy    psql \copy of a CSV file with $COPY_ROWS rows into an empty table
#   http    GET /v1/views/{name}?id=... at 16 clients (Eddy only; `wrk`)
# Runs alternate; medians of $RUNS. Usage: bench/pg_surface.sh [section...] (default: all).
# Installs redis and wrk with apt-get when missing.
set -euo pipefail
# Plain TCP for every server, as PostgreSQL runs here (Eddy would otherwise negotiate TLS).
export PGSSLMODE=disable
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECS:-10}
ROWS=${ROWS:-1000000}
COPY_ROWS=${COPY_ROWS:-10000000}
SECTIONS=${*:-lookup view insert copy http}
EDDY=${EDDY:-${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}/release/eddy}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
WORK=$(mktemp -d /tmp/eddy-bench.XXXXXX)
chmod 777 "$WORK"
EDDY_PORT=54411 PG_PORT=54412 HTTP_PORT=54413 REDIS_PORT=54414
need() { command -v "$1" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }
need redis-server redis-server
need wrk wrk
cleanup() {
  [ -n "${EDDY_PID:-}" ] && kill "$EDDY_PID" 2>/dev/null || true
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true
  su postgres -c "$PGBIN/pg_ctl -D $WORK/pg -m immediate stop" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== starting PostgreSQL 15, Eddy and redis ($(git rev-parse --short HEAD))"
su postgres -c "$PGBIN/initdb -D $WORK/pg -A trust -U postgres" >/dev/null
su postgres -c "$PGBIN/pg_ctl -D $WORK/pg -o '-p $PG_PORT -k $WORK -c max_connections=100' -l $WORK/pg.log -w start" >/dev/null
"$EDDY" serve --data-dir "$WORK/eddy" --pg-listen 127.0.0.1:$EDDY_PORT \
  --http-listen 127.0.0.1:$HTTP_PORT > "$WORK/eddy.log" 2>&1 &
EDDY_PID=$!
redis-server --port $REDIS_PORT --save '' --appendonly no > "$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do grep -q 'eddy ready' "$WORK/eddy.log" && break; sleep 0.1; done
grep -q 'eddy ready' "$WORK/eddy.log" || { cat "$WORK/eddy.log"; exit 1; }
PG="psql -X -q -h 127.0.0.1 -p $PG_PORT -U postgres -d postgres"
ED="psql -X -q -h 127.0.0.1 -p $EDDY_PORT -U eddy -d eddy"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# pgbench_run PORT USER DB CLIENTS SCRIPT -> "tps p50_ms p99_ms"
pgbench_run() {
  local dir="$WORK/log-$RANDOM$RANDOM"; mkdir -p "$dir"; chmod 777 "$dir"
  local out tps n p50 p99
  out=$(cd "$dir" && pgbench -n -M prepared -f "$5" -c "$4" -j 2 -T "$SECS" \
        -h 127.0.0.1 -p "$1" -U "$2" -l "$3" 2>&1) || { echo "$out" >&2; return 1; }
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  cat "$dir"/pgbench_log.* | awk '{print $3}' | sort -n > "$dir/lat"
  n=$(wc -l < "$dir/lat")
  p50=$(sed -n "$(( (n * 50 + 99) / 100 ))p" "$dir/lat")
  p99=$(sed -n "$(( (n * 99 + 99) / 100 ))p" "$dir/lat")
  rm -rf "$dir"
  awk -v t="$tps" -v a="$p50" -v b="$p99" 'BEGIN { printf "%.0f %.3f %.3f\n", t, a / 1000, b / 1000 }'
}

# redis GET at 16 clients, unpipelined -> "rps p50_ms p99_ms"
redis_run() {
  redis-benchmark -p $REDIS_PORT -c 16 -n $((SECS * 60000)) -r "$ROWS" -t get --csv 2>/dev/null |
    awk -F'"' '/"GET"/ { printf "%.0f %s %s\n", $4, $8, $14 }'
}

# compare LABEL EDDY_CMD PG_CMD [REDIS] : alternating runs, medians and ratios
compare() {
  local label=$1 eddy_cmd=$2 pg_cmd=$3 with_redis=${4:-}
  local et=() e50=() e99=() pt=() p50=() p99=() rt=() r50=() r99=() t a b
  for i in $(seq "$RUNS"); do
    read -r t a b < <(eval "$eddy_cmd"); et+=("$t"); e50+=("$a"); e99+=("$b")
    read -r t a b < <(eval "$pg_cmd"); pt+=("$t"); p50+=("$a"); p99+=("$b")
    local line="   run $i: eddy ${et[-1]} (p50 ${e50[-1]} ms, p99 ${e99[-1]} ms) | postgres ${pt[-1]} (p50 ${p50[-1]}, p99 ${p99[-1]})"
    if [ -n "$with_redis" ]; then
      read -r t a b < <(redis_run); rt+=("$t"); r50+=("$a"); r99+=("$b")
      line="$line | redis GET ${rt[-1]} (p50 ${r50[-1]}, p99 ${r99[-1]})"
    fi
    echo "$line"
  done
  local em pm
  em=$(printf '%s\n' "${et[@]}" | median); pm=$(printf '%s\n' "${pt[@]}" | median)
  local line="$label median: eddy $em/s p99 $(printf '%s\n' "${e99[@]}" | median) ms | postgres $pm/s p99 $(printf '%s\n' "${p99[@]}" | median) ms | eddy/postgres $(ratio "$em" "$pm")"
  if [ -n "$with_redis" ]; then
    local rm_; rm_=$(printf '%s\n' "${rt[@]}" | median)
    line="$line | redis GET $rm_/s p99 $(printf '%s\n' "${r99[@]}" | median) ms | eddy/redis $(ratio "$em" "$rm_")"
  fi
  echo "$line"
}

load_kv() {
  echo "== loading $ROWS rows into kv"
  $PG -c "CREATE TABLE kv (id int PRIMARY KEY, v text)" \
      -c "INSERT INTO kv SELECT g, 'value-' || g FROM generate_series(1, $ROWS) g" -c "VACUUM ANALYZE kv"
  $ED -c "CREATE TABLE kv (id int PRIMARY KEY, v text)"
  local step=100000 lo hi
  for ((lo = 1; lo <= ROWS; lo += step)); do
    hi=$((lo + step - 1)); [ $hi -gt "$ROWS" ] && hi=$ROWS
    $ED -c "INSERT INTO kv SELECT value, 'value-' || value FROM generate_series($lo, $hi)"
  done
  redis-benchmark -p $REDIS_PORT -c 16 -n "$ROWS" -r "$ROWS" -t set -q > /dev/null
}

for section in $SECTIONS; do
  case $section in
  lookup)
    [ -n "${KV_LOADED:-}" ] || { load_kv; KV_LOADED=1; }
    printf '\\set id random(1, %d)\nSELECT v FROM kv WHERE id = :id;\n' "$ROWS" > "$WORK/lookup.sql"
    echo "== point lookup by primary key, pgbench -M prepared, 16 clients, ${SECS}s"
    compare "lookup" "pgbench_run $EDDY_PORT eddy eddy 16 $WORK/lookup.sql" \
      "pgbench_run $PG_PORT postgres postgres 16 $WORK/lookup.sql" redis
    ;;
  view)
    echo "== point lookup on a materialized view's key"
    $PG -c "CREATE TABLE ev (k int, x int)" \
        -c "INSERT INTO ev SELECT g % $ROWS + 1, g FROM generate_series(1, $((ROWS * 2))) g" \
        -c "CREATE MATERIALIZED VIEW agg AS SELECT k, count(*) AS n, sum(x) AS s FROM ev GROUP BY k" \
        -c "CREATE UNIQUE INDEX ON agg (k)" -c "VACUUM ANALYZE agg"
    $ED -c "CREATE SOURCE ev (k int, x int)" \
        -c "CREATE MATERIALIZED VIEW agg AS SELECT k, count(*) AS n, sum(x) AS s FROM ev GROUP BY k"
    step=200000
    for ((lo = 1; lo <= ROWS * 2; lo += step)); do
      $ED -c "INSERT INTO ev SELECT value % $ROWS + 1, value FROM generate_series($lo, $((lo + step - 1)))"
    done
    for _ in $(seq 600); do
      [ "$($ED -At -c "SELECT count(*) FROM agg")" = "$ROWS" ] && break; sleep 0.1
    done
    $ED -At -c "SELECT count(*) FROM agg"
    printf '\\set id random(1, %d)\nSELECT n, s FROM agg WHERE k = :id;\n' "$ROWS" > "$WORK/view.sql"
    compare "view lookup" "pgbench_run $EDDY_PORT eddy eddy 16 $WORK/view.sql" \
      "pgbench_run $PG_PORT postgres postgres 16 $WORK/view.sql" redis
    ;;
  insert)
    echo "== prepared single-row INSERT into a bigserial table, 16 clients, ${SECS}s"
    for db in "$PG" "$ED"; do
      $db -c "CREATE TABLE ins (id bigserial PRIMARY KEY, device int NOT NULL, reading float8, note text)"
    done
    printf '\\set d random(1, 1000)\nINSERT INTO ins (device, reading, note) VALUES (:d, :d * 0.5, '"'"'ok'"'"');\n' > "$WORK/insert.sql"
    compare "insert" "pgbench_run $EDDY_PORT eddy eddy 16 $WORK/insert.sql" \
      "pgbench_run $PG_PORT postgres postgres 16 $WORK/insert.sql"
    ;;
  copy)
    echo "== psql \\copy of $COPY_ROWS CSV rows into an empty table"
    awk -v n="$COPY_ROWS" 'BEGIN { for (i = 1; i <= n; i++) printf "%d,device-%d,%.3f\n", i, i % 1000, i * 0.25 }' > "$WORK/rows.csv"
    copy_run() { # DB-CMD -> "rows/s 0 0"
      $1 -c "DROP TABLE IF EXISTS cp" -c "CREATE TABLE cp (id bigint PRIMARY KEY, device text, reading float8)"
      local t0 t1; t0=$(date +%s.%N)
      $1 -c "\\copy cp FROM '$WORK/rows.csv' WITH (FORMAT csv)"
      t1=$(date +%s.%N)
      awk -v n="$COPY_ROWS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f 0 0\n", n / (b - a) }'
    }
    compare "copy rows" "copy_run \"$ED\"" "copy_run \"$PG\""
    ;;
  http)
    [ -n "${KV_LOADED:-}" ] || { load_kv; KV_LOADED=1; }
    echo "== GET /v1/views/kv?id=... at 16 connections, ${SECS}s (wrk)"
    cat > "$WORK/get.lua" <<EOF
request = function() return wrk.format("GET", "/v1/views/kv?id=" .. math.random(1, $ROWS)) end
EOF
    curl -s "http://127.0.0.1:$HTTP_PORT/v1/views/kv?id=42"; echo
    http_rps=()
    for i in $(seq "$RUNS"); do
      out=$(wrk -t 2 -c 16 -d "${SECS}s" --latency -s "$WORK/get.lua" "http://127.0.0.1:$HTTP_PORT")
      http_rps+=("$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')")
      echo "   run $i: ${http_rps[-1]} requests/s, p99 $(echo "$out" | awk '$1 == "99%" {print $2}'), non-2xx: $(echo "$out" | awk '/Non-2xx/ {print $NF}')"
    done
    echo "http median: $(printf '%s\n' "${http_rps[@]}" | median) requests/s"
    ;;
  esac
done
