//! Advisory locks between real connections, as migration tools use them to run one at a time.

use std::time::Duration;

use crate::common::Server;

async fn one_bool(client: &tokio_postgres::Client, sql: &str) -> bool {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_locks_serialize_sessions() {
    let server = Server::start();
    let a = server.connect().await;
    let b = server.connect().await;

    // Session locks: exclusive, reentrant, waited for, released by unlock.
    a.batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .unwrap();
    assert!(!one_bool(&b, "SELECT pg_try_advisory_lock(42)").await);
    assert!(
        one_bool(&b, "SELECT pg_try_advisory_lock(1, 2)").await,
        "two-int keys"
    );
    let waiting = tokio::spawn(async move {
        // Prepared, with a parameter, as sqlx and dbmate send it.
        b.query("SELECT pg_advisory_lock($1)", &[&42i64])
            .await
            .unwrap();
        b
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), async {
            while !waiting.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_err(),
        "b waits while a holds the lock"
    );
    assert!(
        one_bool(&a, "SELECT pg_try_advisory_lock(42)").await,
        "reentrant"
    );
    assert!(one_bool(&a, "SELECT pg_advisory_unlock(42)").await);
    assert!(!waiting.is_finished(), "a still holds it once");
    assert!(one_bool(&a, "SELECT pg_advisory_unlock(42)").await);
    let b = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("b gets the lock once a releases it")
        .unwrap();
    assert!(
        !one_bool(&a, "SELECT pg_advisory_unlock(42)").await,
        "not a's any more"
    );
    assert!(
        !one_bool(&a, "SELECT pg_try_advisory_lock(42)").await,
        "b's now"
    );
    b.batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    assert!(
        one_bool(&a, "SELECT pg_try_advisory_lock(42)").await,
        "unlock_all freed it"
    );
    a.batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();

    // Transaction locks end with the transaction (in autocommit, with the statement).
    a.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7)")
        .await
        .unwrap();
    assert!(!one_bool(&b, "SELECT pg_try_advisory_xact_lock(7)").await);
    a.batch_execute("COMMIT").await.unwrap();
    assert!(one_bool(&b, "SELECT pg_try_advisory_xact_lock(7)").await);
    assert!(
        one_bool(&a, "SELECT pg_try_advisory_lock(7)").await,
        "b's autocommit statement ended"
    );
    a.batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    a.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(8)")
        .await
        .unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        one_bool(&b, "SELECT pg_try_advisory_lock(8)").await,
        "rollback too"
    );

    // A session's locks end when it disconnects; a waiting lock can be cancelled.
    drop(b);
    let c = server.connect().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !one_bool(&c, "SELECT pg_try_advisory_lock(8)").await {
        assert!(std::time::Instant::now() < deadline, "b's lock outlived b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancel = a.cancel_token();
    let blocked = tokio::spawn(async move {
        let e = a
            .batch_execute("SELECT pg_advisory_lock(8)")
            .await
            .unwrap_err();
        (a, e)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (a, e) = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("the wait is cancelled")
        .unwrap();
    assert_eq!(e.code().unwrap().code(), "57014");
    assert!(
        !one_bool(&a, "SELECT pg_try_advisory_lock(8)").await,
        "still c's"
    );
}
