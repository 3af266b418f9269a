"""A service following a materialized view with SUBSCRIBE through psycopg 3: once as a
streamed result (`cursor.stream()`), once through a cursor (DECLARE ... FETCH ALL), then
(phase `again`, after the server restarted) from a new snapshot. Prints what it sees."""
import sys
import threading

import psycopg

dsn, phase = sys.argv[1], sys.argv[2]


def connect():
    return psycopg.connect(dsn, autocommit=True)


def changes(rows):
    return [(op, page, n) for (_, op, page, n) in rows if op != "progress"]


if phase == "setup":
    c = connect()
    c.execute("CREATE SOURCE clicks (page text)")
    c.execute(
        "CREATE MATERIALIZED VIEW busy AS SELECT page, count(*) AS n FROM clicks "
        "GROUP BY page HAVING count(*) < 3"
    )
    c.execute("INSERT INTO clicks VALUES ('/a'), ('/b')")
    # Streamed: the snapshot, then each change as its checkpoint commits.
    seen = []
    epochs = []
    updated = threading.Event()

    def write_later():
        w = connect()
        w.execute("INSERT INTO clicks VALUES ('/a'), ('/c')")
        # The third click on /a once the subscriber has seen the second (else both could
        # land in one checkpoint, and /a would go without an update).
        updated.wait(30)
        w.execute("INSERT INTO clicks VALUES ('/a')")

    cur = connect().cursor()
    writer = None
    for row in cur.stream("SUBSCRIBE TO busy WITH (progress = true)"):
        if row[1] == "progress":
            epochs.append(row[0])
            if writer is None:
                print("snapshot", sorted(changes(seen)))
                seen = []
                writer = threading.Thread(target=write_later)
                writer.start()
            continue
        seen.append(row)
        if ("update", "/a", 2) in changes(seen):
            updated.set()
        if ("delete", "/a", 2) in changes(seen):
            break
    writer.join()
    print("changes", changes(seen))
    print("progress epochs increase", epochs == sorted(set(epochs)))
    # Through a cursor, in a transaction: FETCH ALL waits for rows, then returns them.
    c2 = psycopg.connect(dsn)
    with c2.transaction():
        c2.execute("DECLARE follow CURSOR FOR SUBSCRIBE TO busy")
        first = c2.execute("FETCH ALL FROM follow").fetchall()
        print("cursor snapshot", sorted(changes(first)))
        connect().execute("INSERT INTO clicks VALUES ('/d')")
        later = c2.execute("FETCH ALL follow").fetchall()
        print("cursor change", changes(later))
        print("cursor columns", [d.name for d in c2.execute("FETCH 0 FROM follow").description])
    try:
        c2.execute("FETCH ALL FROM follow")
    except psycopg.Error as e:
        print("after commit", e.sqlstate, e.diag.message_primary)
    c2.rollback()
    for sql in ["SUBSCRIBE TO clicks", "SUBSCRIBE TO nowhere", "SUBSCRIBE TO busy WITH (snapshot = maybe)"]:
        try:
            connect().execute(sql)
        except psycopg.Error as e:
            print("refused", e.sqlstate, e.diag.message_primary)
    try:
        connect().execute("DECLARE x CURSOR FOR SELECT 1")
    except psycopg.Error as e:
        print("outside a block", e.sqlstate, e.diag.message_primary)
else:
    # After a restart: a new subscription starts from the view's rows as they are now.
    cur = connect().cursor()
    for row in cur.stream("SUBSCRIBE TO busy WITH (progress = true)"):
        if row[1] == "progress":
            break
        print("after restart", row[1:])
