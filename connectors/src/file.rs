//! `connector = 'file'`: JSON-lines, CSV or Parquet files in a local directory.
//!
//! Options: `path` (a file, a directory, or a directory with a `*` pattern in the file name,
//! e.g. `/data/in/*.jsonl`), `format` (json, csv, parquet), `csv.header` (skip each file's
//! first line), `csv.delimiter`, `watch` (keep looking for new files and for lines appended
//! to existing ones; default false: read what is there once, then finish), `max_event_bytes`.
//!
//! Files are read in name order. Each file is a partition (a stable hash of its name) whose
//! offset is the number of lines (Parquet: rows) consumed, so a reopened source skips exactly
//! what its checkpoint had read. While watching, a last line without its newline is left for
//! later (the writer may be mid-line).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::format::{DEFAULT_MAX_EVENT_BYTES, EventDecoder, Format, RawEvent};
use crate::source::{Poll, Positions, Source, SourceBatch, SourceSpec};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Text(Format),
    Parquet,
}

#[derive(Debug, Clone)]
pub struct FileConfig {
    dir: PathBuf,
    pattern: Option<String>,
    kind: Kind,
    header: bool,
    watch: bool,
    max_event_bytes: usize,
}

impl FileConfig {
    pub fn from_spec(spec: &SourceSpec) -> Result<Self> {
        let mut o = spec.options.clone();
        let path = local_path(&o.required("path")?)?;
        let format = o.get("format").unwrap_or("json").to_ascii_lowercase();
        let kind = if format == "parquet" {
            o.take("format");
            Kind::Parquet
        } else {
            Kind::Text(Format::from_options(&mut o)?)
        };
        let header = o.bool("csv.header")?.unwrap_or(false);
        let watch = o.bool("watch")?.unwrap_or(false);
        let max_event_bytes = o
            .parse("max_event_bytes")?
            .unwrap_or(DEFAULT_MAX_EVENT_BYTES);
        o.finish()?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let (dir, pattern) = if name.contains('*') {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                Some(name.to_string()),
            )
        } else if path.is_dir() {
            (path.clone(), None)
        } else {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                Some(name.to_string()),
            )
        };
        Ok(Self {
            dir,
            pattern,
            kind,
            header,
            watch,
            max_event_bytes,
        })
    }
}

/// A `path` option as a local path: a plain path or a `file://` URL (the form CREATE MODEL
/// and Parquet sinks take).
fn local_path(text: &str) -> Result<PathBuf> {
    if let Some(rest) = text.strip_prefix("file://") {
        // file:///data/x and file://localhost/data/x name /data/x.
        let rest = rest.strip_prefix("localhost").unwrap_or(rest);
        if !rest.starts_with('/') {
            return Err(Error::Options(format!(
                "option \"path\": {text} is not a local file URL (use file:///absolute/path)"
            )));
        }
        return Ok(PathBuf::from(rest));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(Error::Options(format!(
            "option \"path\": the file connector reads local files, not {scheme}:// URLs"
        )));
    }
    Ok(PathBuf::from(text))
}

impl FileConfig {
    /// Checks that what `path` names is there: the directory (and, for one named file
    /// that is not watched for, the file). CREATE SOURCE runs this, so a typo fails then
    /// and not at every restart of the pipeline.
    pub fn check_exists(&self) -> Result<()> {
        if !self.dir.is_dir() {
            return Err(Error::NotFound(format!(
                "directory \"{}\" does not exist",
                self.dir.display()
            )));
        }
        if let Some(name) = &self.pattern
            && !name.contains('*')
            && !self.watch
            && !self.dir.join(name).is_file()
        {
            return Err(Error::NotFound(format!(
                "file \"{}\" does not exist",
                self.dir.join(name).display()
            )));
        }
        Ok(())
    }
}

/// How much of a file one poll reads at most.
const CHUNK_BYTES: usize = 8 << 20;

/// The byte offset where line `n` (0-based) starts.
fn line_offset(file: &mut std::fs::File, n: usize) -> std::io::Result<u64> {
    use std::io::{BufRead, BufReader, Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(file);
    let mut offset = 0u64;
    let mut buf = Vec::new();
    for _ in 0..n {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf)?;
        if read == 0 {
            break;
        }
        offset += read as u64;
    }
    Ok(offset)
}

/// Reads on to the end of the current line; returns how many bytes that took (None: the
/// file ended first).
fn skip_line(file: &mut std::fs::File) -> std::io::Result<Option<u64>> {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(file);
    let mut skipped = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            return Ok(Some(skipped + i as u64 + 1));
        }
        let len = buf.len();
        skipped += len as u64;
        reader.consume(len);
    }
}

/// `*` matches any run of characters.
fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name.ends_with(last) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// A file's partition number: FNV-1a of its name, as a non-negative i32.
fn partition_of(name: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i32
}

pub struct FileSource {
    config: FileConfig,
    schema: SchemaRef,
    decoder: Option<EventDecoder>,
    positions: Positions,
    /// Files not yet finished, in name order: (name, partition).
    queue: Vec<(String, i32)>,
    /// Byte position of each file's next unread line (text formats).
    cursors: std::collections::HashMap<i32, u64>,
    /// Files read to their end, with their size then (a watched file that grows is read on).
    done: std::collections::HashMap<i32, u64>,
}

impl FileSource {
    pub fn open(spec: &SourceSpec, start: &Positions) -> Result<Self> {
        let config = FileConfig::from_spec(spec)?;
        let decoder = match config.kind {
            Kind::Text(f) => Some(EventDecoder::new(
                spec.schema.clone(),
                f,
                config.max_event_bytes,
            )?),
            Kind::Parquet => None,
        };
        let mut source = Self {
            config,
            schema: spec.schema.clone(),
            decoder,
            positions: start.clone(),
            queue: Vec::new(),
            cursors: std::collections::HashMap::new(),
            done: std::collections::HashMap::new(),
        };
        source.scan_dir()?;
        Ok(source)
    }

    /// Lists matching files; queues those not known to be complete.
    fn scan_dir(&mut self) -> Result<()> {
        let entries = std::fs::read_dir(&self.config.dir).map_err(|e| {
            Error::External(format!("cannot list {}: {e}", self.config.dir.display()))
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| self.config.pattern.as_deref().is_none_or(|p| matches(p, n)))
            .collect();
        names.sort();
        self.queue = names
            .into_iter()
            .map(|n| {
                let p = partition_of(&n);
                (n, p)
            })
            .collect();
        Ok(())
    }

    fn read_text(
        &mut self,
        name: &str,
        partition: i32,
        max_rows: usize,
    ) -> Result<Option<SourceBatch>> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.config.dir.join(name);
        let io =
            |e: std::io::Error| Error::External(format!("cannot read {}: {e}", path.display()));
        let consumed = self.positions.get(&partition).copied().unwrap_or(0) as usize;
        let mut file = std::fs::File::open(&path).map_err(io)?;
        // Byte position of line `consumed`: remembered, or found once by counting lines.
        let start = match self.cursors.get(&partition) {
            Some(c) => *c,
            None => line_offset(&mut file, consumed).map_err(io)?,
        };
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let chunk = CHUNK_BYTES.max(2 * self.config.max_event_bytes) as u64;
        let mut bytes = Vec::new();
        (&mut file)
            .take(chunk)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let at_eof = (bytes.len() as u64) < chunk;
        let mut events = Vec::new();
        let mut dead = Vec::new();
        let mut line = consumed as i64;
        let mut at = 0;
        let mut skipped_to = None;
        while events.len() < max_rows && at < bytes.len() {
            let end = match bytes[at..].iter().position(|b| *b == b'\n') {
                Some(i) => at + i,
                None if !at_eof && at == 0 => {
                    // One line longer than the whole chunk: a dead letter; skip past it.
                    let next = skip_line(&mut file).map_err(io)?;
                    dead.push(crate::source::DeadLetter {
                        partition,
                        offset: line,
                        payload: bytes[..1024.min(bytes.len())].to_vec(),
                        error: format!("line longer than {chunk} bytes"),
                    });
                    line += 1;
                    skipped_to = next.map(|n| start + bytes.len() as u64 + n);
                    break;
                }
                None if self.config.watch || !at_eof => break,
                None => bytes.len(),
            };
            let text = &bytes[at..end];
            let skip = (line == 0 && self.config.header) || text.trim_ascii().is_empty();
            if !skip {
                events.push(RawEvent {
                    partition,
                    offset: line,
                    key: None,
                    timestamp_ms: None,
                    payload: text,
                });
            }
            line += 1;
            at = (end + 1).min(bytes.len());
        }
        if line as usize == consumed {
            return Ok(None);
        }
        let decoder = self.decoder.as_ref().expect("text formats have a decoder");
        let mut batch = decoder.decode(&events)?;
        batch.dead_letters.extend(dead);
        self.positions.insert(partition, line);
        let cursor = skipped_to.unwrap_or(start + at as u64);
        self.cursors.insert(partition, cursor);
        Ok(Some(batch))
    }

    fn read_parquet(
        &mut self,
        name: &str,
        partition: i32,
        max_rows: usize,
    ) -> Result<Option<SourceBatch>> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let path = self.config.dir.join(name);
        let file = std::fs::File::open(&path)
            .map_err(|e| Error::External(format!("cannot read {}: {e}", path.display())))?;
        let consumed = self.positions.get(&partition).copied().unwrap_or(0) as usize;
        let external =
            |e: parquet::errors::ParquetError| Error::External(format!("{}: {e}", path.display()));
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(external)?;
        let total = builder.metadata().file_metadata().num_rows() as usize;
        if consumed >= total {
            return Ok(None);
        }
        let file_schema = builder.schema().clone();
        let mut reader = builder
            .with_offset(consumed)
            .with_limit(max_rows)
            .with_batch_size(max_rows)
            .build()
            .map_err(external)?;
        let Some(batch) = reader.next().transpose()? else {
            return Ok(None);
        };
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                let (i, _) = file_schema.column_with_name(f.name()).ok_or_else(|| {
                    Error::External(format!("{} has no column \"{}\"", path.display(), f.name()))
                })?;
                Ok(cast(batch.column(i), f.data_type())?)
            })
            .collect::<Result<Vec<_>>>()?;
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let relaxed = Arc::new(arrow::datatypes::Schema::new(
            self.schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let rows = RecordBatch::try_new_with_options(relaxed, columns, &options)?;
        self.positions
            .insert(partition, (consumed + rows.num_rows()) as i64);
        let origins = (consumed..consumed + rows.num_rows())
            .map(|o| (partition, o as i64))
            .collect();
        Ok(Some(SourceBatch {
            rows,
            dead_letters: Vec::new(),
            origins,
        }))
    }
}

impl Source for FileSource {
    fn poll(&mut self, max_rows: usize, timeout: Duration) -> Result<Poll> {
        let queue = self.queue.clone();
        for (name, partition) in queue {
            let size = std::fs::metadata(self.config.dir.join(&name)).map_or(0, |m| m.len());
            if self.done.get(&partition) == Some(&size) {
                continue;
            }
            let batch = match self.config.kind {
                Kind::Parquet => self.read_parquet(&name, partition, max_rows)?,
                Kind::Text(_) => self.read_text(&name, partition, max_rows)?,
            };
            match batch {
                Some(b) => return Ok(Poll::Batch(b)),
                None => {
                    self.done.insert(partition, size);
                }
            }
        }
        if !self.config.watch {
            return Ok(Poll::Finished);
        }
        std::thread::sleep(timeout.min(Duration::from_millis(200)));
        self.scan_dir()?;
        Ok(Poll::Idle)
    }

    fn positions(&self) -> Positions {
        self.positions.clone()
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn watermark_per_partition(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn spec(dir: &Path, extra: &[(&str, &str)]) -> SourceSpec {
        let mut opts: Vec<(String, String)> =
            vec![("path".into(), dir.join("*.jsonl").display().to_string())];
        opts.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        SourceSpec {
            name: "f".into(),
            schema: Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
            options: Options::new(opts).unwrap(),
            created_at_ms: 0,
        }
    }

    fn ids(source: &mut FileSource) -> (Vec<i64>, usize) {
        let (mut ids, mut dead) = (Vec::new(), 0);
        while let Poll::Batch(b) = source.poll(2, Duration::ZERO).unwrap() {
            ids.extend(b.rows.column(0).as_primitive::<Int64Type>().values().iter());
            dead += b.dead_letters.len();
        }
        (ids, dead)
    }

    #[test]
    fn reads_files_in_order_and_resumes_at_positions() {
        let dir = std::env::temp_dir().join(format!("eddy-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.jsonl"), "{\"id\": 3}\n{\"id\": 4}\n").unwrap();
        std::fs::write(dir.join("a.jsonl"), "{\"id\": 1}\nnot json\n{\"id\": 2}").unwrap();
        std::fs::write(dir.join("skip.csv"), "9\n").unwrap();
        let mut all = FileSource::open(&spec(&dir, &[]), &Positions::new()).unwrap();
        assert_eq!(ids(&mut all), (vec![1, 2, 3, 4], 1));
        // Reopen after the first poll: the rest, exactly once.
        let mut first = FileSource::open(&spec(&dir, &[]), &Positions::new()).unwrap();
        let Poll::Batch(b) = first.poll(2, Duration::ZERO).unwrap() else {
            panic!()
        };
        assert_eq!(b.rows.num_rows(), 1);
        let mut rest = FileSource::open(&spec(&dir, &[]), &first.positions()).unwrap();
        assert_eq!(ids(&mut rest), (vec![2, 3, 4], 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn patterns() {
        assert!(matches("*.jsonl", "a.jsonl"));
        assert!(matches("in-*-x.csv", "in-2024-x.csv"));
        assert!(!matches("*.jsonl", "a.csv"));
    }
}
