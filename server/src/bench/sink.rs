//! `eddy bench sink`: the Parquet sink exporting Nexmark bids, beside a bare parquet
//! `ArrowWriter` writing the same batches (zstd both); and rows per CPU-second through the
//! Kafka sink into librdkafka's mock cluster (in this process, so its CPU counts too).
//!
//! Throughput is MB/s of Arrow input (the batches' memory size): for the sink, from
//! CREATE SINK until the checkpoint after the last event has committed, with the Nexmark
//! generator running beside it as the source; for the bare writer, from the first write to
//! the closed file.

use std::time::Instant;

use anyhow::Result;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use super::{cpu_seconds, generate, generate_with, run_pipeline};
use eddy_connectors::nexmark::Table;

pub struct SinkArgs {
    pub events: u64,
    pub runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Seconds for a bare ArrowWriter to write `batches` to a file and close it.
fn bare_writer(batches: &[datafusion::arrow::array::RecordBatch]) -> Result<f64> {
    let path = std::env::temp_dir().join(format!("eddy-bench-bare-{}.parquet", std::process::id()));
    let start = Instant::now();
    let file = std::fs::File::create(&path)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(file, batches[0].schema(), Some(props))?;
    for b in batches {
        writer.write(b)?;
    }
    writer.into_inner()?.sync_all()?;
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(secs)
}

pub async fn sink(args: SinkArgs) -> Result<()> {
    let rate = 10_000_000;
    let batches = generate(args.events, rate)?;
    let mb: f64 = batches
        .iter()
        .map(|b| b.get_array_memory_size() as f64)
        .sum::<f64>()
        / 1e6;
    println!(
        "sink: {} Nexmark bids ({mb:.0} MB of Arrow), {} runs, revision {}",
        args.events,
        args.runs,
        option_env!("EDDY_GIT_REVISION").unwrap_or("unknown")
    );
    let out = std::env::temp_dir().join(format!("eddy-bench-sink-{}", std::process::id()));
    let mock = rdkafka::mocking::MockCluster::new(1)?;
    mock.create_topic("bids", 1, 1)?;
    let (mut sink_mbs, mut bare_mbs, mut ratios, mut kafka) = (vec![], vec![], vec![], vec![]);
    for run in 0..args.runs {
        let _ = std::fs::remove_dir_all(&out);
        let (_, wall) = run_pipeline(
            args.events,
            rate,
            &[Table::Bid],
            "export",
            &format!(
                "CREATE SINK export FROM bid WITH (connector = 'parquet', path = '{}', checkpoint_interval = '10s')",
                out.display()
            ),
            false,
            None,
        )
        .await?;
        let bare = bare_writer(&batches)?;
        let (s, b) = (mb / wall, mb / bare);
        let (cpu, _) = run_pipeline(
            args.events,
            rate,
            &[Table::Bid],
            "to_kafka",
            &format!(
                "CREATE SINK to_kafka FROM bid WITH (connector = 'kafka', bootstrap.servers = '{}', topic = 'bids', checkpoint_interval = '1s')",
                mock.bootstrap_servers()
            ),
            false,
            None,
        )
        .await?;
        let k = args.events as f64 / cpu;
        println!(
            "run {run}: parquet sink {s:.1} MB/s, bare ArrowWriter {b:.1} MB/s, ratio {:.2}; kafka sink {k:.0} rows per CPU-second",
            s / b
        );
        sink_mbs.push(s);
        bare_mbs.push(b);
        ratios.push(s / b);
        kafka.push(k);
    }
    let _ = std::fs::remove_dir_all(&out);
    let generate_cpu0 = cpu_seconds();
    generate_with(Table::Bid, args.events, rate, |_| {})?;
    let generate_cpu = cpu_seconds() - generate_cpu0;
    println!(
        "median: parquet_sink_mb_per_s={:.1} bare_writer_mb_per_s={:.1} ratio={:.2} kafka_sink_rows_per_cpu_second={:.0} (generating the events alone: {generate_cpu:.2} CPU-s)",
        median(sink_mbs),
        median(bare_mbs),
        median(ratios),
        median(kafka)
    );
    Ok(())
}
