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

//! With `partition_by`, rows are split into Hive-style directories (`dt=2026-11-26/hour=09/`,
//! `machine=m7/`) and each directory gets its own file per epoch; the hidden files live in
//! the directory they will be published in, so recovery needs no manifest.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Int64Type, Schema, TimeUnit};
use arrow::row::{RowConverter, SortField};
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

fn parquet_error(e: impl std::fmt::Display) -> Error {
    Error::External(format!("parquet sink: {e}"))
}

/// One level of `partition_by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionKey {
    /// `column`: `column=value/`; the column leaves the file (Hive's convention).
    Column(String),
    /// `day(ts)`: `dt=YYYY-MM-DD/` of the timestamp (UTC); the column stays in the file.
    Day(String),
    /// `hour(ts)`: `dt=YYYY-MM-DD/hour=HH/`.
    Hour(String),
}

/// How a sink's rows are split into directories (none: one directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partitioning {
    pub keys: Vec<PartitionKey>,
}

/// Hive's name for a NULL partition value.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";
const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

impl Partitioning {
    /// Parses `partition_by = 'hour(ts), machine'`.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for part in spec.split(',').map(str::trim) {
            let bad = || {
                Error::Options(format!(
                    "invalid partition_by \"{spec}\": expected columns, day(column) or hour(column), separated by commas"
                ))
            };
            let ident = |s: &str| {
                let s = s.trim().trim_matches('"');
                (!s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_'))
                    .then(|| s.to_string())
            };
            let key = match part.split_once('(') {
                Some((f, rest)) => {
                    let column = rest.strip_suffix(')').and_then(ident).ok_or_else(bad)?;
                    match f.trim().to_ascii_lowercase().as_str() {
                        "day" => PartitionKey::Day(column),
                        "hour" => PartitionKey::Hour(column),
                        _ => return Err(bad()),
                    }
                }
                None => PartitionKey::Column(ident(part).ok_or_else(bad)?),
            };
            keys.push(key);
        }
        Ok(Self { keys })
    }

    /// Checks the keys against the rows' schema: the columns exist, day/hour are timestamps,
    /// and some column is left for the files.
    pub fn check(&self, schema: &Schema) -> Result<()> {
        for key in &self.keys {
            let (PartitionKey::Column(c) | PartitionKey::Day(c) | PartitionKey::Hour(c)) = key;
            let field = schema.field_with_name(c).map_err(|_| {
                Error::Options(format!(
                    "partition_by: column \"{c}\" does not exist in the sink's rows"
                ))
            })?;
            if !matches!(key, PartitionKey::Column(_))
                && !matches!(
                    field.data_type(),
                    DataType::Timestamp(..) | DataType::Date32
                )
            {
                return Err(Error::Options(format!(
                    "partition_by: day() and hour() need a timestamp column, and \"{c}\" is {}",
                    field.data_type()
                )));
            }
        }
        let dropped = self
            .keys
            .iter()
            .filter(|k| matches!(k, PartitionKey::Column(_)))
            .count();
        if dropped >= schema.fields().len() {
            return Err(Error::Options(
                "partition_by: every column is a partition column, so the files would have none"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Splits `batch` by partition: (relative directory, rows without partition columns).
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        if self.keys.is_empty() {
            return Ok(vec![(String::new(), batch.clone())]);
        }
        let schema = batch.schema();
        let mut values: Vec<ArrayRef> = Vec::with_capacity(self.keys.len());
        for key in &self.keys {
            values.push(match key {
                PartitionKey::Column(c) => batch
                    .column(schema.index_of(c).map_err(parquet_error)?)
                    .clone(),
                PartitionKey::Day(c) | PartitionKey::Hour(c) => {
                    let unit = if matches!(key, PartitionKey::Day(_)) {
                        DAY_US
                    } else {
                        HOUR_US
                    };
                    let ts = batch.column(schema.index_of(c).map_err(parquet_error)?);
                    let us = cast(ts, &DataType::Timestamp(TimeUnit::Microsecond, None))
                        .and_then(|a| cast(&a, &DataType::Int64))
                        .map_err(parquet_error)?;
                    let us = us.as_primitive::<Int64Type>();
                    Arc::new(arrow::compute::kernels::arity::unary::<_, _, Int64Type>(
                        us,
                        |v| v.div_euclid(unit),
                    ))
                }
            });
        }
        let kept: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| {
                !self
                    .keys
                    .iter()
                    .any(|k| matches!(k, PartitionKey::Column(c) if c == schema.field(i).name()))
            })
            .collect();
        let projected = batch.project(&kept).map_err(parquet_error)?;
        let converter = RowConverter::new(
            values
                .iter()
                .map(|v| SortField::new(v.data_type().clone()))
                .collect(),
        )
        .map_err(parquet_error)?;
        let rows = converter.convert_columns(&values).map_err(parquet_error)?;
        let mut groups: Vec<Vec<u32>> = Vec::new();
        let mut index: HashMap<arrow::row::Row<'_>, usize> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            let g = *index.entry(row).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i as u32);
        }
        let mut out = Vec::with_capacity(groups.len());
        for rows in groups {
            let dir = self.directory(&values, rows[0] as usize)?;
            let batch = if out.is_empty() && rows.len() == batch.num_rows() {
                projected.clone()
            } else {
                let indices = UInt32Array::from(rows);
                let columns = projected
                    .columns()
                    .iter()
                    .map(|c| take(c, &indices, None))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(parquet_error)?;
                RecordBatch::try_new(projected.schema(), columns).map_err(parquet_error)?
            };
            out.push((dir, batch));
        }
        Ok(out)
    }

    /// The directory of row `i`, from the partition values.
    fn directory(&self, values: &[ArrayRef], i: usize) -> Result<String> {
        let mut parts = Vec::new();
        for (key, v) in self.keys.iter().zip(values) {
            if v.is_null(i) {
                match key {
                    PartitionKey::Column(c) => parts.push(format!("{c}={NULL_PARTITION}")),
                    PartitionKey::Day(_) => parts.push(format!("dt={NULL_PARTITION}")),
                    PartitionKey::Hour(_) => {
                        parts.push(format!("dt={NULL_PARTITION}"));
                        parts.push(format!("hour={NULL_PARTITION}"));
                    }
                }
                continue;
            }
            match key {
                PartitionKey::Column(c) => {
                    let text = cast(&v.slice(i, 1), &DataType::Utf8).map_err(parquet_error)?;
                    let text = text.as_string::<i32>().value(0);
                    parts.push(format!("{c}={}", escape(text)));
                }
                PartitionKey::Day(_) | PartitionKey::Hour(_) => {
                    let n = v.as_primitive::<Int64Type>().value(i);
                    let hourly = matches!(key, PartitionKey::Hour(_));
                    let us = if hourly { n * HOUR_US } else { n * DAY_US };
                    let t = chrono::DateTime::from_timestamp_micros(us)
                        .ok_or_else(|| parquet_error(format!("timestamp out of range: {us}")))?;
                    parts.push(t.format("dt=%Y-%m-%d").to_string());
                    if hourly {
                        parts.push(t.format("hour=%H").to_string());
                    }
                }
            }
        }
        Ok(parts.join("/"))
    }
}

/// A partition value as a directory name: Hive's escapes (`%2F` for `/`, ...).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() || "\"#%'*/:=?\\{}[]^".contains(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    if out.is_empty() || out == "." || out == ".." {
        return NULL_PARTITION.to_string();
    }
    out
}

/// An epoch's closed files, waiting for its checkpoint to commit: (hidden, final) paths.
#[derive(Debug, Default)]
pub struct Pending {
    files: Vec<(PathBuf, PathBuf)>,
}

pub struct ParquetFiles {
    /// Where the hidden in-progress files live.
    dir: PathBuf,
    /// Where committed files get their final names (the sink's directory, or the spool a
    /// remote sink uploads from).
    publish: PathBuf,
    name: String,
    partitioning: Partitioning,
    /// The current epoch's open files, by partition directory.
    writers: BTreeMap<String, (PathBuf, ArrowWriter<File>)>,
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

/// Every file under `dir` (recursively), as paths relative to it.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let entries = match std::fs::read_dir(dir.join(&rel)) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("list", &dir.join(&rel), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io("list", dir, e))?;
            let path = rel.join(entry.file_name());
            if entry.file_type().map_err(|e| io("list", dir, e))?.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The file that marks a directory as a sink's own: recovery lists and deletes files only in
/// a directory that carries its sink's marker.
fn marker_name(name: &str) -> String {
    format!(".eddy-sink-{name}")
}

/// Whether sink `name` may write into `dir`: it does not exist yet, is empty, or carries the
/// sink's marker (it made the directory its own before). A directory holding anything else
/// (`/`, a home directory, another sink's files) is refused, so that recovery never lists or
/// deletes files the sink did not write.
pub fn check_directory(dir: &Path, name: &str) -> Result<()> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("list", dir, e)),
    };
    if dir.join(marker_name(name)).is_file() || entries.next().is_none() {
        return Ok(());
    }
    Err(Error::Options(format!(
        "directory {} holds files this sink did not write: a Parquet sink needs an empty directory of its own",
        dir.display()
    )))
}

/// Claims `dir` for sink `name` ([`check_directory`]), creating it and its marker.
fn claim_directory(dir: &Path, name: &str) -> Result<()> {
    check_directory(dir, name)?;
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    let marker = dir.join(marker_name(name));
    if !marker.is_file() {
        File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("create", &marker, e))?;
        sync_dir(dir)?;
    }
    Ok(())
}

impl ParquetFiles {
    /// Opens the sink `name` writing into `dir` and publishing into `publish`, after the
    /// checkpoint of epoch `committed`: publishes the files of committed epochs a crash left
    /// hidden and deletes the others. Both directories must be the sink's own
    /// ([`check_directory`]).
    pub fn open(
        dir: &Path,
        publish: &Path,
        name: &str,
        committed: u64,
        partitioning: Partitioning,
    ) -> Result<Self> {
        claim_directory(dir, name)?;
        if publish != dir {
            claim_directory(publish, name)?;
        }
        let prefix = format!(".eddy-{name}-");
        let mut touched = vec![PathBuf::new()];
        for rel in walk(dir)? {
            let Some(epoch) = rel
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .and_then(|f| {
                    f.strip_prefix(&prefix)
                        .and_then(|r| r.strip_suffix(".parquet.tmp"))
                        .and_then(|e| e.parse::<u64>().ok())
                })
            else {
                continue;
            };
            let path = dir.join(&rel);
            let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
            if epoch <= committed {
                let into = publish.join(&parent);
                std::fs::create_dir_all(&into).map_err(|e| io("create", &into, e))?;
                let done = into.join(Self::final_name(name, epoch));
                std::fs::rename(&path, &done).map_err(|e| io("publish", &done, e))?;
            } else {
                std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
            }
            touched.push(parent);
        }
        touched.dedup();
        for rel in &touched {
            sync_dir(&dir.join(rel))?;
            if publish.join(rel).exists() {
                sync_dir(&publish.join(rel))?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            publish: publish.to_path_buf(),
            name: name.to_string(),
            partitioning,
            writers: BTreeMap::new(),
        })
    }

    fn final_name(name: &str, epoch: u64) -> String {
        format!("part-{epoch:012}-{name}.parquet")
    }

    fn hidden_name(&self, epoch: u64) -> String {
        format!(".eddy-{}-{epoch}.parquet.tmp", self.name)
    }

    /// Appends rows to the current epoch's files.
    pub fn write(&mut self, batch: &RecordBatch, next_epoch: u64) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        for (part, rows) in self.partitioning.split(batch)? {
            if !self.writers.contains_key(&part) {
                let into = self.dir.join(&part);
                std::fs::create_dir_all(&into).map_err(|e| io("create", &into, e))?;
                let tmp = into.join(self.hidden_name(next_epoch));
                let file = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                let writer = ArrowWriter::try_new(file, rows.schema(), Some(props))
                    .map_err(parquet_error)?;
                self.writers.insert(part.clone(), (tmp, writer));
            }
            let (_, writer) = self.writers.get_mut(&part).expect("opened above");
            writer.write(&rows).map_err(parquet_error)?;
        }
        Ok(())
    }

    /// Bytes of the current epoch's files so far (written and buffered).
    pub fn current_size(&self) -> u64 {
        self.writers
            .values()
            .map(|(_, w)| (w.bytes_written() + w.in_progress_size()) as u64)
            .sum()
    }

    /// Closes and syncs the files of `epoch` (none when the epoch had no rows).
    pub fn finish(&mut self, epoch: u64) -> Result<Pending> {
        let mut pending = Pending::default();
        for (part, (tmp, writer)) in std::mem::take(&mut self.writers) {
            let file = writer.into_inner().map_err(parquet_error)?;
            file.sync_all().map_err(|e| io("sync", &tmp, e))?;
            // The file was named for the epoch that was next when it opened: the same one.
            let expected = self.dir.join(&part).join(self.hidden_name(epoch));
            if tmp != expected {
                std::fs::rename(&tmp, &expected).map_err(|e| io("rename", &tmp, e))?;
            }
            sync_dir(&self.dir.join(&part))?;
            let into = self.publish.join(&part);
            std::fs::create_dir_all(&into).map_err(|e| io("create", &into, e))?;
            pending
                .files
                .push((expected, into.join(Self::final_name(&self.name, epoch))));
        }
        Ok(pending)
    }

    /// Makes a committed epoch's files visible.
    pub fn publish(&self, pending: Pending) -> Result<()> {
        for (tmp, done) in pending.files {
            std::fs::rename(&tmp, &done).map_err(|e| io("publish", &done, e))?;
            sync_dir(done.parent().unwrap_or(&self.publish))?;
        }
        Ok(())
    }
}

/// What a remote sink's uploader reports.
#[derive(Debug, Clone, Default)]
pub struct UploadStatus {
    /// Committed files waiting on local disk for the store.
    pub spooled_files: u64,
    pub spooled_bytes: u64,
    pub uploaded_files: u64,
    /// Multipart uploads a crash left unfinished, aborted when the uploader started.
    pub aborted_uploads: u64,
    /// The last upload failure, until an upload succeeds.
    pub last_error: Option<String>,
}

/// What waits in a spool directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpoolUsage {
    pub files: u64,
    pub bytes: u64,
    /// How long the oldest file has waited (zero when none waits): the upload lag.
    pub oldest: std::time::Duration,
}

/// Files, bytes and the oldest file's age in a spool directory.
pub fn spool_usage(spool: &Path) -> SpoolUsage {
    let mut usage = SpoolUsage::default();
    let now = std::time::SystemTime::now();
    for rel in walk(spool).unwrap_or_default() {
        if rel.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let Ok(meta) = std::fs::metadata(spool.join(&rel)) else {
            continue;
        };
        usage.files += 1;
        usage.bytes += meta.len();
        if let Some(age) = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
        {
            usage.oldest = usage.oldest.max(age);
        }
    }
    usage
}

/// Where an upload goes.
pub struct UploadTarget {
    pub store: crate::store::Store,
    /// Files of at least this size go up in parts of this size (S3's minimum is 5 MiB).
    pub part_size: usize,
}

/// The marker of a multipart upload in progress: `<spool>/<dir>/.<file>.upload`, holding the
/// object key and the upload id, so a restart can abort what a crash left behind.
fn marker_path(spool: &Path, rel: &Path) -> PathBuf {
    let name = rel.file_name().unwrap_or_default().to_string_lossy();
    spool
        .join(rel.parent().unwrap_or(Path::new("")))
        .join(format!(".{name}.upload"))
}

/// Aborts the multipart uploads a crash left unfinished (their markers are in the spool);
/// returns how many.
pub async fn abort_unfinished(
    spool: &Path,
    store: &dyn object_store::multipart::MultipartStore,
) -> u64 {
    let mut aborted = 0;
    for rel in walk(spool).unwrap_or_default() {
        if rel.extension().is_none_or(|e| e != "upload") {
            continue;
        }
        let marker = spool.join(&rel);
        let Ok(text) = std::fs::read_to_string(&marker) else {
            continue;
        };
        if let Some((key, id)) = text.split_once('\n') {
            let key = object_store::path::Path::from(key);
            match store.abort_multipart(&key, &id.trim().to_string()).await {
                Ok(()) => aborted += 1,
                Err(e) => tracing::warn!("cannot abort the multipart upload of {key}: {e}"),
            }
        }
        let _ = std::fs::remove_file(&marker);
    }
    aborted
}

/// Uploads a large file in parts, with a marker while the upload is open.
async fn put_in_parts(
    target: &UploadTarget,
    key: &object_store::path::Path,
    local: &Path,
    marker: &Path,
) -> std::result::Result<(), String> {
    use tokio::io::AsyncReadExt;
    let store = &target.store.multipart;
    let id = store
        .create_multipart(key)
        .await
        .map_err(|e| crate::store::describe(&e))?;
    std::fs::write(marker, format!("{key}\n{id}"))
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    let result: std::result::Result<(), String> = async {
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| format!("cannot read {}: {e}", local.display()))?;
        let mut parts = Vec::new();
        loop {
            let mut buf = Vec::with_capacity(target.part_size);
            (&mut file)
                .take(target.part_size as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| format!("cannot read {}: {e}", local.display()))?;
            if buf.is_empty() {
                break;
            }
            let part = store
                .put_part(key, &id, parts.len(), buf.into())
                .await
                .map_err(|e| crate::store::describe(&e))?;
            parts.push(part);
        }
        store
            .complete_multipart(key, &id, parts)
            .await
            .map_err(|e| crate::store::describe(&e))?;
        Ok(())
    }
    .await;
    if result.is_err() {
        // Best effort: whatever stays open is aborted when the uploader next starts.
        if store.abort_multipart(key, &id).await.is_ok() {
            let _ = std::fs::remove_file(marker);
        }
    } else {
        let _ = std::fs::remove_file(marker);
    }
    result
}

/// Uploads the committed files that appear in `spool` to the target store, oldest first,
/// removing each local copy once the store has it. Files of at least `part_size` go up in
/// parts. While the store is unreachable the files wait on disk and the upload is retried
/// with a growing pause (100 ms to 10 s); the pipeline keeps running. An object becomes
/// visible in the store only complete (a PUT, or a completed multipart upload), and a
/// repeated upload writes the same bytes under the same name.
pub async fn upload(
    spool: PathBuf,
    target: UploadTarget,
    status: std::sync::Arc<parking_lot::Mutex<UploadStatus>>,
) {
    use object_store::ObjectStoreExt;
    let aborted = abort_unfinished(&spool, target.store.multipart.as_ref()).await;
    status.lock().aborted_uploads += aborted;
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        let files: Vec<(PathBuf, u64)> = walk(&spool)
            .unwrap_or_default()
            .into_iter()
            .filter(|rel| rel.extension().is_some_and(|e| e == "parquet"))
            .filter_map(|rel| {
                let len = std::fs::metadata(spool.join(&rel)).ok()?.len();
                Some((rel, len))
            })
            .collect();
        {
            let mut s = status.lock();
            s.spooled_files = files.len() as u64;
            s.spooled_bytes = files.iter().map(|f| f.1).sum();
        }
        if files.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        for (rel, len) in files {
            let local = spool.join(&rel);
            let mut key = target.store.prefix.clone();
            for part in rel.iter() {
                key = key.join(part.to_string_lossy().as_ref());
            }
            let result = if len as usize >= target.part_size {
                put_in_parts(&target, &key, &local, &marker_path(&spool, &rel)).await
            } else {
                match tokio::fs::read(&local).await {
                    Ok(bytes) => target
                        .store
                        .objects
                        .put(&key, bytes.into())
                        .await
                        .map(|_| ())
                        .map_err(|e| crate::store::describe(&e)),
                    Err(e) => Err(format!("cannot read {}: {e}", local.display())),
                }
            };
            match result {
                Ok(()) => {
                    let _ = std::fs::remove_file(&local);
                    let mut s = status.lock();
                    s.uploaded_files += 1;
                    s.last_error = None;
                    pause = std::time::Duration::from_millis(100);
                }
                Err(e) => {
                    status.lock().last_error = Some(e);
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
    use arrow::datatypes::Field;

    use super::*;

    fn batch(from: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(from..from + n))],
        )
        .unwrap()
    }

    /// The files in `dir` besides the sink's marker.
    fn visible(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".eddy-sink-"))
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn large_files_go_up_in_parts_and_a_crashed_upload_is_aborted_on_restart() {
        use object_store::ObjectStoreExt;
        use object_store::memory::InMemory;
        use object_store::multipart::MultipartStore;
        let memory = Arc::new(InMemory::new());
        let target = UploadTarget {
            store: crate::store::Store {
                objects: memory.clone(),
                multipart: memory.clone(),
                prefix: object_store::path::Path::from("exports"),
            },
            part_size: 1000,
        };
        let spool = std::env::temp_dir().join(format!("eddy-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&spool);
        std::fs::create_dir_all(spool.join("dt=x")).unwrap();
        let rel = Path::new("dt=x/part-1.parquet");
        let bytes: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(spool.join(rel), &bytes).unwrap();
        let key = object_store::path::Path::from("exports/dt=x/part-1.parquet");
        put_in_parts(&target, &key, &spool.join(rel), &marker_path(&spool, rel))
            .await
            .unwrap();
        let got = memory.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(got.as_ref(), bytes.as_slice(), "three parts, reassembled");
        assert!(
            !marker_path(&spool, rel).exists(),
            "no marker once complete"
        );

        // A crash after the upload was created: the marker stays, the restart aborts it.
        let other = object_store::path::Path::from("exports/dt=x/part-2.parquet");
        let id = memory.create_multipart(&other).await.unwrap();
        let part = memory
            .put_part(&other, &id, 0, vec![1u8; 10].into())
            .await
            .unwrap();
        let marker = marker_path(&spool, Path::new("dt=x/part-2.parquet"));
        std::fs::write(&marker, format!("{other}\n{id}")).unwrap();
        assert_eq!(abort_unfinished(&spool, memory.as_ref()).await, 1);
        assert!(!marker.exists());
        assert!(
            memory
                .complete_multipart(&other, &id, vec![part])
                .await
                .is_err(),
            "the aborted upload cannot be completed"
        );
        std::fs::remove_dir_all(&spool).unwrap();
    }

    #[test]
    fn partitions_split_rows_into_hive_directories() {
        use arrow::array::{StringArray, TimestampMicrosecondArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("machine", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
        ]));
        let h = 3_600_000_000i64;
        // 2026-11-26T09:00Z and 10:00Z.
        let base = 1_795_683_600_000_000i64;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(StringArray::from(vec![
                    Some("m/1"),
                    Some("m2"),
                    Some("m/1"),
                    None,
                ])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        Some(base),
                        Some(base + h + 5),
                        Some(base + 10),
                        None,
                    ])
                    .with_timezone("+00:00"),
                ),
            ],
        )
        .unwrap();
        let p = Partitioning::parse("hour(ts), machine").unwrap();
        p.check(&schema).unwrap();
        let parts = p.split(&batch).unwrap();
        let summary: Vec<(String, Vec<i64>, usize)> = parts
            .iter()
            .map(|(dir, b)| {
                let ids = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
                (dir.clone(), ids.values().to_vec(), b.num_columns())
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("dt=2026-11-26/hour=09/machine=m%2F1".to_string(), vec![1, 3], 2),
                ("dt=2026-11-26/hour=10/machine=m2".to_string(), vec![2], 2),
                (
                    "dt=__HIVE_DEFAULT_PARTITION__/hour=__HIVE_DEFAULT_PARTITION__/machine=__HIVE_DEFAULT_PARTITION__"
                        .to_string(),
                    vec![4],
                    2
                ),
            ],
            "the machine column leaves the files, ts stays"
        );
        assert!(
            Partitioning::parse("hour(id)")
                .unwrap()
                .check(&schema)
                .is_err()
        );
        assert!(Partitioning::parse("nope").unwrap().check(&schema).is_err());
        assert!(Partitioning::parse("week(ts)").is_err());
    }

    #[test]
    fn a_sink_writes_only_into_a_directory_of_its_own() {
        let tmp = std::env::temp_dir().join(format!("eddy-sink-dirs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let foreign = tmp.join("home");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join(".eddy-s-1.parquet.tmp"), b"not the sink's").unwrap();
        let e = ParquetFiles::open(&foreign, &foreign, "s", 0, Partitioning::default())
            .expect_err("refused");
        assert!(e.to_string().contains("did not write"), "{e}");
        assert!(
            foreign.join(".eddy-s-1.parquet.tmp").exists(),
            "nothing deleted"
        );
        assert!(check_directory(Path::new("/"), "s").is_err());
        // A new directory becomes the sink's; it may reopen it, another sink may not.
        let own = tmp.join("own");
        ParquetFiles::open(&own, &own, "s", 0, Partitioning::default()).unwrap();
        ParquetFiles::open(&own, &own, "s", 0, Partitioning::default()).unwrap();
        assert!(check_directory(&own, "other").is_err());
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn files_appear_at_commit_and_recovery_keeps_exactly_the_committed_epochs() {
        let dir = std::env::temp_dir().join(format!("eddy-parquet-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = ParquetFiles::open(&dir, &dir, "s", 0, Partitioning::default()).unwrap();
        sink.write(&batch(0, 10), 1).unwrap();
        assert_eq!(
            visible(&dir),
            vec![".eddy-s-1.parquet.tmp"],
            "hidden until committed"
        );
        let pending = sink.finish(1).unwrap();
        sink.publish(pending).unwrap();
        assert_eq!(visible(&dir), vec!["part-000000000001-s.parquet"]);
        assert!(
            sink.finish(2).unwrap().files.is_empty(),
            "an epoch without rows writes no file"
        );
        // Epoch 3 closed but its checkpoint not committed (crash before the record), epoch 4
        // committed but not published (crash before the rename): reopening after epoch 4.
        sink.write(&batch(10, 5), 3).unwrap();
        let _uncommitted = sink.finish(3).unwrap();
        sink.write(&batch(15, 5), 4).unwrap();
        let _unpublished = sink.finish(4).unwrap();
        sink.write(&batch(20, 5), 5).unwrap();
        drop(sink);
        ParquetFiles::open(&dir, &dir, "s", 2, Partitioning::default()).unwrap();
        assert_eq!(
            visible(&dir),
            vec!["part-000000000001-s.parquet"],
            "epochs after the committed one are removed"
        );
        let mut sink = ParquetFiles::open(&dir, &dir, "s", 2, Partitioning::default()).unwrap();
        sink.write(&batch(10, 5), 3).unwrap();
        let p = sink.finish(3).unwrap();
        drop(p);
        drop(sink);
        ParquetFiles::open(&dir, &dir, "s", 3, Partitioning::default()).unwrap();
        assert_eq!(
            visible(&dir),
            vec!["part-000000000001-s.parquet", "part-000000000003-s.parquet"],
            "a committed epoch's hidden file is published on reopening"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
