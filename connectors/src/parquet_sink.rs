//! `connector = 'parquet'` sinks: one Parquet file per checkpoint epoch, published only when
//! the checkpoint that covers its rows has committed.
//!
//! Rows of epoch N are written to a hidden file `.eddy-<sink>-<N>.parquet.tmp` (readers such as
//! DataFusion, DuckDB and Spark skip names starting with a dot). At the barrier the file is
//! closed and synced; after the checkpoint commits, it is renamed to `part-<N>-<sink>.parquet`
//! and the directory synced. A crash leaves at most hidden files behind: on reopening, those
//! of committed epochs are published (the crash came between commit and rename), the others
//! are deleted (their rows are replayed into later epochs). So every row is in exactly one
//! visible file, and no reader ever sees a partial one.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::{Error, Result};

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::External(format!(
        "parquet sink: cannot {what} {}: {e}",
        path.display()
    ))
}

/// An epoch's closed file, waiting for its checkpoint to commit.
#[derive(Debug)]
pub struct Pending {
    tmp: PathBuf,
    done: PathBuf,
}

pub struct ParquetFiles {
    /// Where the hidden in-progress files live.
    dir: PathBuf,
    /// Where committed files get their final names (the sink's directory, or the spool a
    /// remote sink uploads from).
    publish: PathBuf,
    name: String,
    writer: Option<(PathBuf, ArrowWriter<File>)>,
}

impl std::fmt::Debug for ParquetFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParquetFiles({})", self.dir.display())
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))
}

impl ParquetFiles {
    /// Opens the sink `name` writing into `dir` and publishing into `publish`, after the
    /// checkpoint of epoch `committed`: publishes the files of committed epochs a crash left
    /// hidden and deletes the others.
    pub fn open(dir: &Path, publish: &Path, name: &str, committed: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        std::fs::create_dir_all(publish).map_err(|e| io("create", publish, e))?;
        let prefix = format!(".eddy-{name}-");
        let entries = std::fs::read_dir(dir).map_err(|e| io("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io("list", dir, e))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(epoch) = file
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".parquet.tmp"))
                .and_then(|e| e.parse::<u64>().ok())
            else {
                continue;
            };
            let path = entry.path();
            if epoch <= committed {
                let done = publish.join(Self::final_name(name, epoch));
                std::fs::rename(&path, &done).map_err(|e| io("publish", &done, e))?;
            } else {
                std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
            }
        }
        sync_dir(dir)?;
        sync_dir(publish)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            publish: publish.to_path_buf(),
            name: name.to_string(),
            writer: None,
        })
    }

    fn final_name(name: &str, epoch: u64) -> String {
        format!("part-{epoch:012}-{name}.parquet")
    }

    /// Appends rows to the current epoch's file.
    pub fn write(&mut self, batch: &RecordBatch, next_epoch: u64) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.writer.is_none() {
            let tmp = self
                .dir
                .join(format!(".eddy-{}-{next_epoch}.parquet.tmp", self.name));
            let file = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            let writer = ArrowWriter::try_new(file, batch.schema(), Some(props))
                .map_err(|e| Error::External(format!("parquet sink: {e}")))?;
            self.writer = Some((tmp, writer));
        }
        let (_, writer) = self.writer.as_mut().expect("opened above");
        writer
            .write(batch)
            .map_err(|e| Error::External(format!("parquet sink: {e}")))
    }

    /// Bytes of the current epoch's file so far (written and buffered).
    pub fn current_size(&self) -> u64 {
        self.writer.as_ref().map_or(0, |(_, w)| {
            (w.bytes_written() + w.in_progress_size()) as u64
        })
    }

    /// Closes and syncs the file of `epoch` (None when the epoch had no rows).
    pub fn finish(&mut self, epoch: u64) -> Result<Option<Pending>> {
        let Some((tmp, writer)) = self.writer.take() else {
            return Ok(None);
        };
        let file = writer
            .into_inner()
            .map_err(|e| Error::External(format!("parquet sink: {e}")))?;
        file.sync_all().map_err(|e| io("sync", &tmp, e))?;
        // The file was named for the epoch that was next when it opened: the same one.
        let expected = self
            .dir
            .join(format!(".eddy-{}-{epoch}.parquet.tmp", self.name));
        if tmp != expected {
            std::fs::rename(&tmp, &expected).map_err(|e| io("rename", &tmp, e))?;
        }
        Ok(Some(Pending {
            tmp: expected,
            done: self.publish.join(Self::final_name(&self.name, epoch)),
        }))
    }

    /// Makes a committed epoch's file visible.
    pub fn publish(&self, pending: Pending) -> Result<()> {
        std::fs::rename(&pending.tmp, &pending.done)
            .map_err(|e| io("publish", &pending.done, e))?;
        sync_dir(&self.publish)
    }
}

/// What a remote sink's uploader reports.
#[derive(Debug, Clone, Default)]
pub struct UploadStatus {
    /// Committed files waiting on local disk for the store.
    pub spooled_files: u64,
    pub spooled_bytes: u64,
    pub uploaded_files: u64,
    /// The last upload failure, until an upload succeeds.
    pub last_error: Option<String>,
}

/// Uploads the committed files that appear in `spool` to `store` under `prefix`, oldest
/// first, removing each local copy once the store has it. While the store is unreachable
/// the files wait on disk and the upload is retried with a growing pause (100 ms to 10 s);
/// the pipeline keeps running. An object becomes visible in the store only complete (a PUT),
/// and a repeated upload writes the same bytes under the same name.
pub async fn upload(
    spool: PathBuf,
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    prefix: object_store::path::Path,
    status: std::sync::Arc<parking_lot::Mutex<UploadStatus>>,
) {
    use object_store::ObjectStoreExt;
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        let mut files: Vec<(String, u64)> = match std::fs::read_dir(&spool) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let len = e.metadata().ok()?.len();
                    name.ends_with(".parquet").then_some((name, len))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        {
            let mut s = status.lock();
            s.spooled_files = files.len() as u64;
            s.spooled_bytes = files.iter().map(|f| f.1).sum();
        }
        if files.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        for (name, _) in files {
            let local = spool.join(&name);
            let bytes = match tokio::fs::read(&local).await {
                Ok(b) => b,
                Err(e) => {
                    status.lock().last_error =
                        Some(format!("cannot read {}: {e}", local.display()));
                    break;
                }
            };
            match store
                .put(&prefix.clone().join(name.as_str()), bytes.into())
                .await
            {
                Ok(_) => {
                    let _ = std::fs::remove_file(&local);
                    let mut s = status.lock();
                    s.uploaded_files += 1;
                    s.last_error = None;
                    pause = std::time::Duration::from_millis(100);
                }
                Err(e) => {
                    status.lock().last_error = Some(e.to_string());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(10));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(from: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(from..from + n))],
        )
        .unwrap()
    }

    fn visible(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn files_appear_at_commit_and_recovery_keeps_exactly_the_committed_epochs() {
        let dir = std::env::temp_dir().join(format!("eddy-parquet-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = ParquetFiles::open(&dir, &dir, "s", 0).unwrap();
        sink.write(&batch(0, 10), 1).unwrap();
        assert_eq!(
            visible(&dir),
            vec![".eddy-s-1.parquet.tmp"],
            "hidden until committed"
        );
        let pending = sink.finish(1).unwrap().unwrap();
        sink.publish(pending).unwrap();
        assert_eq!(visible(&dir), vec!["part-000000000001-s.parquet"]);
        assert!(
            sink.finish(2).unwrap().is_none(),
            "an epoch without rows writes no file"
        );
        // Epoch 3 closed but its checkpoint not committed (crash before the record), epoch 4
        // committed but not published (crash before the rename): reopening after epoch 4.
        sink.write(&batch(10, 5), 3).unwrap();
        let _uncommitted = sink.finish(3).unwrap().unwrap();
        sink.write(&batch(15, 5), 4).unwrap();
        let _unpublished = sink.finish(4).unwrap().unwrap();
        sink.write(&batch(20, 5), 5).unwrap();
        drop(sink);
        ParquetFiles::open(&dir, &dir, "s", 2).unwrap();
        assert_eq!(
            visible(&dir),
            vec!["part-000000000001-s.parquet"],
            "epochs after the committed one are removed"
        );
        let mut sink = ParquetFiles::open(&dir, &dir, "s", 2).unwrap();
        sink.write(&batch(10, 5), 3).unwrap();
        let p = sink.finish(3).unwrap().unwrap();
        drop(p);
        drop(sink);
        ParquetFiles::open(&dir, &dir, "s", 3).unwrap();
        assert_eq!(
            visible(&dir),
            vec!["part-000000000001-s.parquet", "part-000000000003-s.parquet"],
            "a committed epoch's hidden file is published on reopening"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
