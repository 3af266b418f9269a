//! The queries Grafana's stock PostgreSQL datasource sends, as its Go backend sends them:
//! the simple protocol with text results (pgx), macros already expanded. Taken from Grafana's
//! datasource (postgresMetaQuery.ts, macros.go) and run over a live pipeline: a push source, a
//! windowed materialized view and a stream.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::Server;

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600;

async fn text_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn cells(rows: &[&[&str]]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|r| r.iter().map(|c| Some(c.to_string())).collect())
        .collect()
}

/// The schemas Grafana leaves out of its lists.
const SYSTEM_SCHEMAS: &str = "'information_schema', 'pg_catalog', '_timescaledb_cache',
    '_timescaledb_catalog', '_timescaledb_internal', '_timescaledb_config',
    'timescaledb_information', 'timescaledb_experimental'";

/// Grafana's search-path condition (buildSchemaConstraint).
const IN_SEARCH_PATH: &str = "
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_datasource_queries_answer_over_a_live_pipeline() {
    let server = Server::start_secure();
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE SOURCE readings (device int, temp double precision, ts timestamptz,
                 at_epoch bigint, WATERMARK FOR ts AS ts - INTERVAL '1 second');
             CREATE MATERIALIZED VIEW per_device_10s AS
               SELECT device, window_start, window_end, count(*) AS n, avg(temp) AS avg_temp
               FROM TUMBLE(readings, ts, INTERVAL '10 seconds')
               GROUP BY device, window_start, window_end;
             CREATE STREAM hot AS SELECT device, temp, ts FROM readings WHERE temp > 50;",
        )
        .await
        .unwrap();
    // Two minutes of readings, one a second, then one at +200 s that closes their windows.
    let mut values: Vec<String> = (0..120)
        .map(|i| {
            format!(
                "({}, {}, to_timestamp({}), {})",
                i % 3 + 1,
                i as f64 / 2.0,
                T0 + i,
                T0 + i
            )
        })
        .collect();
    values.push(format!("(1, 0, to_timestamp({}), {})", T0 + 200, T0 + 200));
    client
        .batch_execute(&format!(
            "INSERT INTO readings VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let windows = text_rows(&client, "SELECT count(*) FROM per_device_10s").await;
        let hot = text_rows(&client, "SELECT count(*) FROM hot").await;
        if windows == cells(&[&["36"]]) && hot == cells(&[&["19"]]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pipeline did not catch up: {windows:?} windows, {hot:?} hot rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Health checks: an empty query answers, whatever form it takes.
    for ping in ["-- ping", ";", "SELECT 1"] {
        client
            .simple_query(ping)
            .await
            .unwrap_or_else(|e| panic!("{ping}: {e:?}"));
    }
    // Version and TimescaleDB detection.
    assert_eq!(
        text_rows(
            &client,
            "SELECT current_setting('server_version_num')::int/100 as version"
        )
        .await,
        cells(&[&["1600"]])
    );
    assert!(
        text_rows(
            &client,
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        )
        .await
        .is_empty()
    );

    // The query builder: schemas, tables, columns.
    assert_eq!(
        text_rows(
            &client,
            &format!(
                "SELECT schema_name AS \"name\"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('pg_toast', {SYSTEM_SCHEMAS})
    ORDER BY schema_name"
            )
        )
        .await,
        cells(&[&["eddy_catalog"], &["public"]])
    );
    let tables = cells(&[
        &["hot"],
        &["per_device_10s"],
        &["readings"],
        &["readings_errors"],
    ]);
    assert_eq!(
        text_rows(
            &client,
            &format!(
                "SELECT
    CASE WHEN {IN_SEARCH_PATH}
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS \"table\"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ({SYSTEM_SCHEMAS})
    ORDER BY CASE WHEN {IN_SEARCH_PATH} THEN 0 ELSE 1 END, 1"
            )
        )
        .await,
        tables
    );
    assert_eq!(
        text_rows(
            &client,
            "SELECT quote_ident(table_name) AS \"table\"
      FROM information_schema.tables
      WHERE quote_ident(table_schema) = 'public'
      ORDER BY 1"
        )
        .await,
        tables
    );
    assert_eq!(
        text_rows(
            &client,
            &format!(
                "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('per_device_10s'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('per_device_10s'))[1]
          AND quote_ident(table_name) = (parse_ident('per_device_10s'))[2]
        ELSE quote_ident(table_name) = 'per_device_10s'
          AND {IN_SEARCH_PATH}
      END"
            )
        )
        .await,
        cells(&[
            &["device", "integer"],
            &["window_start", "timestamp with time zone"],
            &["window_end", "timestamp with time zone"],
            &["n", "bigint"],
            &["avg_temp", "double precision"],
        ])
    );

    // Panels. $__timeGroupAlias(ts, 1m) with $__timeFilter(ts):
    assert_eq!(
        text_rows(
            &client,
            "SELECT floor(extract(epoch from ts)/60)*60 AS \"time\", count(*) AS n, avg(temp) AS avg_temp
             FROM readings
             WHERE ts BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-01T00:01:59Z'
             GROUP BY 1 ORDER BY 1"
        )
        .await,
        cells(&[
            &["1767225600", "60", "14.75"],
            &["1767225660", "60", "44.75"]
        ])
    );
    // $__unixEpochGroupAlias(at_epoch, 30s) with $__unixEpochFilter(at_epoch):
    assert_eq!(
        text_rows(
            &client,
            "SELECT floor((at_epoch)/30)*30 AS \"time\", count(*) AS n FROM readings
             WHERE at_epoch >= 1767225600 AND at_epoch <= 1767225659 GROUP BY 1 ORDER BY 1"
        )
        .await,
        cells(&[&["1767225600", "30"], &["1767225630", "30"]])
    );
    // A time series per device from the windowed view ($__timeFilter on window_end), with a
    // trailing comment as Grafana leaves it.
    let series = text_rows(
        &client,
        "SELECT window_end AS \"time\", device::text AS metric, avg_temp FROM per_device_10s
         WHERE window_end BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-01T00:00:30Z'
         ORDER BY 1, 2 /* grafana panel 1 */",
    )
    .await;
    assert_eq!(series.len(), 9);
    assert_eq!(
        series[..3],
        cells(&[
            &["2026-01-01 00:00:10+00", "1", "2.25"],
            &["2026-01-01 00:00:10+00", "2", "2"],
            &["2026-01-01 00:00:10+00", "3", "2.5"],
        ])[..]
    );
    // A table of recent rows of the stream; $__timeFrom() and $__timeTo() in a filter.
    assert_eq!(
        text_rows(
            &client,
            "SELECT ts AS \"time\", device, temp FROM hot
             WHERE ts >= '2026-01-01T00:00:00Z' AND ts <= '2026-01-01T01:00:00Z'
             ORDER BY ts DESC LIMIT 3"
        )
        .await,
        cells(&[
            &["2026-01-01 00:01:59+00", "3", "59.5"],
            &["2026-01-01 00:01:58+00", "2", "59"],
            &["2026-01-01 00:01:57+00", "1", "58.5"],
        ])
    );
    // The visual query builder's SQL (toRawSql: an aggregate, GROUP BY and ORDER BY a
    // column, LIMIT 50, a trailing space).
    let built = text_rows(
        &client,
        "SELECT window_end, avg(avg_temp) AS \"avg_temp\" FROM per_device_10s WHERE window_end BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-01T00:00:20Z' GROUP BY window_end ORDER BY window_end ASC LIMIT 50 ",
    )
    .await;
    assert_eq!(
        built,
        cells(&[
            &["2026-01-01 00:00:10+00", "2.25"],
            &["2026-01-01 00:00:20+00", "7.25"],
        ])
    );
    // $__timeGroup(ts, '30s') with a second grouping column: GROUP BY 1, 2.
    let grouped = text_rows(
        &client,
        "SELECT floor(extract(epoch from ts)/30)*30 AS \"time\", device::text AS metric, count(*)
         FROM readings WHERE ts BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-01T00:00:59Z'
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .await;
    assert_eq!(
        grouped,
        cells(&[
            &["1767225600", "1", "10"],
            &["1767225600", "2", "10"],
            &["1767225600", "3", "10"],
            &["1767225630", "1", "10"],
            &["1767225630", "2", "10"],
            &["1767225630", "3", "10"],
        ])
    );
}

/// Grafana's macro expansion (macros.go) for the macros the provisioned dashboard uses, over
/// the time range `from..to` (seconds since the epoch).
fn expand_macros(sql: &str, from: i64, to: i64) -> String {
    let rfc3339 = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let mut out = String::new();
    let mut rest = sql;
    while let Some(start) = rest.find("$__") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let open = after.find('(').expect("macro arguments");
        let close = after.find(')').expect("macro arguments end");
        let name = &after[..open];
        let args: Vec<&str> = after[open + 1..close].split(',').map(str::trim).collect();
        let group = |args: &[&str]| {
            let interval: i64 = args[1]
                .trim_matches('\'')
                .trim_end_matches('s')
                .parse()
                .expect("an interval in seconds");
            format!(
                "floor(extract(epoch from {})/{interval})*{interval}",
                args[0]
            )
        };
        out.push_str(&match name {
            "timeFilter" => format!(
                "{} BETWEEN '{}' AND '{}'",
                args[0],
                rfc3339(from),
                rfc3339(to)
            ),
            "timeGroup" => group(&args),
            "timeGroupAlias" => format!("{} AS \"time\"", group(&args)),
            "timeFrom" => format!("'{}'", rfc3339(from)),
            "timeTo" => format!("'{}'", rfc3339(to)),
            other => panic!("macro {other} is not expanded by this test"),
        });
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The dashboard docker/grafana provisions, over the demo pipeline (examples/demo.sql): every
/// panel's query, macros expanded, returns rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_dashboard_panels_show_the_demo_pipeline() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let server = Server::start_secure();
    let client = server.connect().await;
    let demo = std::fs::read_to_string(root.join("examples/demo.sql")).unwrap();
    let models = root.join("examples/models/");
    let demo = demo.replace("'examples/models/", &format!("'{}", models.display()));
    client.batch_execute(&demo).await.unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docker/grafana/dashboards/eddy-demo.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert_eq!(panels.len(), 3);
    let now = chrono::Utc::now().timestamp();
    for panel in panels {
        let sql = panel["targets"][0]["rawSql"].as_str().unwrap();
        let sql = expand_macros(sql, now - 900, now + 900);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = text_rows(&client, &sql).await;
            if let Some(first) = rows.first() {
                // A time series needs its first column named time, holding timestamps or epochs.
                let time = first[0].as_deref().unwrap();
                assert!(
                    time.starts_with("20") || time.parse::<f64>().is_ok(),
                    "{time}"
                );
                assert!(first.iter().all(Option::is_some), "{sql}: {first:?}");
                break;
            }
            assert!(Instant::now() < deadline, "no rows within 60 s: {sql}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let columns = client.simple_query(&sql).await.unwrap();
        let SimpleQueryMessage::RowDescription(description) = &columns[0] else {
            panic!("a row description first");
        };
        assert_eq!(description[0].name(), "time", "{sql}");
    }
}
