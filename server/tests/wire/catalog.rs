//! pg_catalog and information_schema through the clients that read them: psql's describe
//! commands compared with a real PostgreSQL given the same DDL, Eddy's streaming objects in
//! psql's listings, and the queries Grafana's PostgreSQL datasource sends.

use std::path::Path;

use crate::common::{Postgres, Server, psql_session};

/// DDL both databases accept.
const SHARED_DDL: &str = "
CREATE TABLE readings (id bigint PRIMARY KEY, device varchar(20) NOT NULL,
    temp double precision, price numeric(10,2), ok boolean DEFAULT true, day date,
    ts timestamptz DEFAULT now());
CREATE TABLE tags (name text, n integer, note text NOT NULL);
CREATE TABLE pairs (a integer, b integer, label text, PRIMARY KEY (a, b));
CREATE VIEW hot AS SELECT id, device, temp FROM readings WHERE temp > 30;
CREATE SCHEMA ops;
CREATE TABLE ops.jobs (job_id integer PRIMARY KEY, note text);
";

/// Everything psql prints from "View definition:" to the next section: PostgreSQL prints its
/// own deparse of the query, Eddy the text it was given.
fn without_view_definition(out: &str) -> String {
    let mut kept = Vec::new();
    let mut skipping = false;
    for line in out.lines() {
        if line == "View definition:" {
            skipping = true;
            continue;
        }
        if skipping && (line.starts_with(' ') || line.starts_with("SELECT")) {
            continue;
        }
        skipping = false;
        kept.push(line);
    }
    kept.join("\n")
}

#[test]
fn psql_describe_commands_print_what_postgres_prints() {
    let pg = Postgres::start();
    let eddy = Server::start_secure();
    psql_session(&pg.conn_string(), SHARED_DDL);
    psql_session(&eddy.conn_string(), SHARED_DDL);
    for command in [
        "\\d",
        "\\dt",
        "\\dv",
        "\\di",
        "\\d readings",
        "\\d+ readings",
        "\\d tags",
        "\\d+ tags",
        "\\d pairs",
        "\\d hot",
        "\\d+ hot",
        "\\d readings_pkey",
        "\\d ops.jobs",
        "\\dt ops.*",
        "\\du",
        "\\df",
        "\\dm",
        "\\x\n\\d tags",
        "\\x\nSELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'readings'",
    ] {
        let expected = without_view_definition(&psql_session(&pg.conn_string(), command));
        let got = without_view_definition(&psql_session(&eddy.conn_string(), command));
        assert_eq!(got, expected, "psql {command:?}");
    }
    // A table outside the search path is not listed, as in PostgreSQL.
    assert!(!psql_session(&eddy.conn_string(), "\\dt").contains("jobs"));

    // The view's definition is Eddy's own text of the query.
    let hot = psql_session(&eddy.conn_string(), "\\d+ hot");
    assert!(
        hot.contains("View definition:\nSELECT id, device, temp FROM readings WHERE temp > 30"),
        "{hot}"
    );
    let schemas = psql_session(&eddy.conn_string(), "\\dn");
    assert_eq!(
        schemas,
        "         List of schemas\n     Name     |       Owner       \n--------------+-------------------\n eddy_catalog | eddy\n ops          | eddy\n public       | pg_database_owner\n(3 rows)\n\n"
    );
    let databases = psql_session(&eddy.conn_string(), "\\l");
    assert!(
        databases.contains(
            " eddy | eddy  | UTF8     | C.UTF-8 | C.UTF-8 |            | libc            | "
        ),
        "{databases}"
    );
    let timing = psql_session(&eddy.conn_string(), "\\timing\nSELECT 1;");
    assert!(
        timing.contains("Timing is on.") && timing.contains("Time: "),
        "{timing}"
    );
}

#[test]
fn streaming_objects_show_in_psql_listings() {
    let eddy = Server::start_secure();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/anomaly_v1.onnx");
    let sink_dir = tempfile::tempdir().unwrap();
    psql_session(
        &eddy.conn_string(),
        &format!(
            "CREATE SOURCE sensor (device int NOT NULL, temp double precision, ts timestamptz,
                 WATERMARK FOR ts AS ts - INTERVAL '2 seconds')
               WITH (connector = 'datagen', rows_per_second = '10', fields.device.min = '1',
                     fields.device.max = '3');
             CREATE SOURCE taps (card text NOT NULL, door int, ts timestamptz);
             CREATE STREAM hot AS SELECT device, temp, ts FROM sensor WHERE temp > 0.9;
             CREATE MATERIALIZED VIEW per_device AS
               SELECT device, count(*) AS n, max(temp) AS max_temp FROM sensor GROUP BY device;
             CREATE MODEL anomaly FROM '{}' WITH (features = 'temperature, vibration');
             CREATE SINK history FROM sensor WITH (connector = 'parquet', path = '{}');
             CREATE SINK alerts FROM hot WITH (connector = 'webhook',
                 url = 'http://127.0.0.1:9/alerts', headers.authorization = 'Bearer s3cret');",
            model.display(),
            sink_dir.path().display()
        ),
    );
    let conn = eddy.conn_string();
    assert_eq!(
        psql_session(&conn, "\\d"),
        "                 List of relations
 Schema |     Name      |       Type        | Owner 
--------+---------------+-------------------+-------
 public | alerts        | foreign table     | eddy
 public | alerts_errors | table             | eddy
 public | anomaly       | foreign table     | eddy
 public | history       | foreign table     | eddy
 public | hot           | foreign table     | eddy
 public | per_device    | materialized view | eddy
 public | sensor        | foreign table     | eddy
 public | sensor_errors | table             | eddy
 public | taps          | foreign table     | eddy
 public | taps_errors   | table             | eddy
(10 rows)

"
    );
    assert_eq!(
        psql_session(&conn, "\\d sensor"),
        "                          Foreign table \"public.sensor\"
 Column |           Type           | Collation | Nullable | Default | FDW options 
--------+--------------------------+-----------+----------+---------+-------------
 device | integer                  |           | not null |         | 
 temp   | double precision         |           |          |         | 
 ts     | timestamp with time zone |           |          |         | 
Server: datagen
FDW options: (rows_per_second '10', \"fields.device.min\" '1', \"fields.device.max\" '3')

"
    );
    let taps = psql_session(&conn, "\\d taps");
    assert!(
        taps.contains(" card   | text  ") && taps.ends_with("Server: push\n\n"),
        "{taps}"
    );
    let hot = psql_session(&conn, "\\d hot");
    assert!(
        hot.contains("Server: stream\nFDW options: (query 'SELECT device, temp, ts FROM sensor WHERE temp > 0.9')"),
        "{hot}"
    );
    let view = psql_session(&conn, "\\d+ per_device");
    assert!(
        view.starts_with("                                       Materialized view \"public.per_device\"")
            && view.contains(" n        | bigint           |")
            && view.contains("View definition:\nSELECT device, count(*) AS n, max(temp) AS max_temp FROM sensor GROUP BY device\nAccess method: heap"),
        "{view}"
    );
    let model = psql_session(&conn, "\\d anomaly");
    assert!(
        model.contains("Server: onnx\nFDW options: (version '1', location '")
            && model.contains("features 'temperature, vibration')"),
        "{model}"
    );
    // Credentials never show.
    let alerts = psql_session(&conn, "\\d alerts");
    assert!(
        alerts.contains("Server: webhook") && alerts.contains("\"headers.authorization\" '***'"),
        "{alerts}"
    );
    assert!(!alerts.contains("s3cret"));
    let foreign = psql_session(&conn, "\\dE");
    assert!(foreign.contains("(6 rows)"), "{foreign}");
    let mvs = psql_session(&conn, "\\dm");
    assert!(
        mvs.contains(" public | per_device | materialized view | eddy"),
        "{mvs}"
    );

    // information_schema lists what SELECT can read, with PostgreSQL's type names.
    let tables = psql_session(
        &conn,
        "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    );
    assert_eq!(
        tables,
        "  table_name   |    table_type     
---------------+-------------------
 alerts_errors | BASE TABLE
 hot           | FOREIGN
 per_device    | MATERIALIZED VIEW
 sensor_errors | BASE TABLE
 taps          | FOREIGN
 taps_errors   | BASE TABLE
(6 rows)

"
    );
    let columns = psql_session(
        &conn,
        "SELECT column_name, data_type, is_nullable, udt_name FROM information_schema.columns WHERE table_name = 'taps' ORDER BY ordinal_position",
    );
    assert_eq!(
        columns,
        " column_name |        data_type         | is_nullable |  udt_name   
-------------+--------------------------+-------------+-------------
 card        | text                     | NO          | text
 door        | integer                  | YES         | int4
 ts          | timestamp with time zone | YES         | timestamptz
(3 rows)

"
    );
}

/// The catalog functions and PostgreSQL syntax clients use, as plain queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_functions_and_syntax_clients_use() {
    let server = Server::start_secure();
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE things (id int PRIMARY KEY, label varchar(20))")
        .await
        .unwrap();
    let text = |sql: &'static str| {
        let client = &client;
        async move {
            let rows = client
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or("NULL").to_string())
                            .collect::<Vec<_>>()
                            .join("|"),
                    ),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let oid = text("SELECT oid FROM pg_catalog.pg_class WHERE relname = 'things'").await;
    assert_eq!(text("SELECT 'things'::regclass").await, oid);
    assert_eq!(text("SELECT 'public.things'::regclass::oid").await, oid);
    assert_eq!(text("SELECT to_regclass('things')").await, oid);
    assert_eq!(
        text("SELECT to_regtype('integer'), to_regtype('character varying'), to_regtype('nope')")
            .await,
        "23|1043|NULL"
    );
    assert_eq!(text("SELECT 'int8'::regtype").await, "20");
    assert_eq!(
        text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = 'things'::regclass AND a.attnum > 0 ORDER BY a.attnum"
        )
        .await,
        "id|integer\nlabel|character varying(20)"
    );
    assert_eq!(
        text(
            "SELECT pg_get_userbyid(relowner), pg_table_is_visible(oid), obj_description(oid, 'pg_class') \
             FROM pg_catalog.pg_class WHERE relname = 'things'"
        )
        .await,
        "eddy|t|NULL"
    );
    assert_eq!(
        text(
            "SELECT pg_get_indexdef(indexrelid), pg_get_constraintdef(indexrelid) FROM pg_catalog.pg_index \
             WHERE indrelid = 'things'::regclass"
        )
        .await,
        "CREATE UNIQUE INDEX things_pkey ON public.things USING btree (id)|PRIMARY KEY (id)"
    );
    assert_eq!(
        text(
            "SELECT quote_ident('Mixed Case'), current_schemas(true), pg_encoding_to_char(6), \
             has_table_privilege('things', 'SELECT'), set_config('eddy.test', 'on', false), \
             current_setting('eddy.test')"
        )
        .await,
        "\"Mixed Case\"|{pg_catalog,public}|UTF8|t|on|on"
    );
    // pg_settings shows the session's settings, as SHOW does.
    assert_eq!(
        text(
            "SELECT name, setting FROM pg_catalog.pg_settings \
             WHERE name IN ('eddy.test', 'server_version_num', 'TimeZone') ORDER BY 1"
        )
        .await,
        "TimeZone|UTC\neddy.test|on\nserver_version_num|160006"
    );
    assert_eq!(
        text("SELECT (ARRAY[10, 20, 30])[2], 20 = ANY(ARRAY[10, 20]), E'a\\tb' = 'a' || chr(9) || 'b'").await,
        "20|t|t"
    );
    assert_eq!(
        text("SELECT g, u FROM generate_series(1, 2) AS g, unnest(ARRAY['x', 'y']) AS u ORDER BY 1, 2")
            .await,
        "1|x\n1|y\n2|x\n2|y"
    );
    assert_eq!(
        text(
            "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^thing' \
             COLLATE pg_catalog.default AND c.relkind = 'r'"
        )
        .await,
        "things"
    );
    assert_eq!(
        text("SELECT CASE true WHEN true THEN 'yes' END").await,
        "yes"
    );
}
