"""SUBSCRIBE latency: a row inserted into a source, until a subscriber of a grouping view
over it receives the change; the view checkpoints every 20 ms. Usage: python3
bench/subscribe_latency.py "<libpq dsn of a fresh Eddy>" [rows] (PYTHONPATH=.tools/python)."""
import sys
import threading
import time

import psycopg

dsn = sys.argv[1]
c = psycopg.connect(dsn, autocommit=True)
c.execute("CREATE SOURCE lat (k int)")
c.execute("CREATE MATERIALIZED VIEW latv WITH (checkpoint_interval = '20ms') AS SELECT k, count(*) AS n FROM lat GROUP BY k")
sent = {}
arrived = {}
ready = threading.Event()
def follow():
    cur = psycopg.connect(dsn, autocommit=True).cursor()
    for row in cur.stream("SUBSCRIBE TO latv WITH (progress = true)"):
        if row[1] == 'progress':
            ready.set()
            continue
        arrived[row[2]] = time.perf_counter()
        if len(arrived) >= N:
            return
N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
t = threading.Thread(target=follow); t.start()
ready.wait(10)
w = psycopg.connect(dsn, autocommit=True)
for i in range(N):
    w.execute("INSERT INTO lat VALUES (%s)", (i,), prepare=True)
    sent[i] = time.perf_counter()
    time.sleep(0.03)
t.join(30)
lat = sorted((arrived[k] - sent[k]) * 1000 for k in sent if k in arrived)
print(f"n={len(lat)} p50={lat[len(lat)//2]:.1f}ms p99={lat[int(len(lat)*0.99)-1]:.1f}ms max={lat[-1]:.1f}ms")
