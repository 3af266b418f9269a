//! Starts, supervises and stops the pipelines of all streams and materialized views.
//!
//! [`StreamManager::reconcile`] makes the running set equal the catalog's: it runs after every
//! catalog change and at server start, so pipelines restart by themselves after a crash. A
//! pipeline that fails (a broker down, a bad event the engine cannot handle) is restarted from
//! its last checkpoint after a growing pause; its error stays visible in SHOW until then.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::DFSchema;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionContext;
use eddy_connectors::{Options, SourceSpec};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::aggregate::Aggregator;
use super::changelog::{LogShared, ViewLog};
use super::checkpoint::{Barrier, Injector, previous_checkpoint_key, record_key, recover};
use super::exchange::{Gather, Router, run_exchange, run_spread};
use super::log::{LogSignal, LogSource};
use super::models::{ModelSource, ModelVersions, PinnedModels};
use super::operators::asof_join::AsofJoin;
use super::operators::change_join::ChangeJoin;
use super::operators::group_changes::GroupChanges;
use super::operators::interval_join::IntervalJoin;
use super::operators::lookup_join::LookupJoin;
use super::operators::match_recognize::MatchRecognize;
use super::operators::materialize::Materialize;
use super::operators::normalize::Normalize;
use super::operators::over::Over;
use super::operators::per_window::PerWindow;
use super::operators::sink_changes::SinkChanges;
use super::operators::top_n::{TopN, TopPlan};
use super::operators::union::Union;
use super::pipeline::SegmentOp;
use super::pipeline::{
    AggregateOp, CHANNEL_CAPACITY, Message, Metrics, Operator, Sink, SinkKind, SourceLoop,
    Stateless, min_watermark, run_inputs, run_operator, run_tee,
};
use super::plan;
use super::plan::{Combine, ViewInput};
use super::session::SessionAggregator;
use super::sinks::{SinkConfig, SinkTarget};
use super::state::StateStore;
use super::view::ViewWriter;
use crate::catalog::{Catalog, QueryInfo, TableDef, TableKind};
use crate::error::{Error, Result};
use crate::storage::{KvStore, WriteOp};

pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1000;
/// Sinks write one file per checkpoint, so they checkpoint less often.
pub const DEFAULT_SINK_CHECKPOINT_INTERVAL_MS: u64 = 10_000;

struct Running {
    stop: Arc<AtomicBool>,
    supervisor: tokio::task::JoinHandle<()>,
}

/// Operator ids of a pipeline's state tables.
pub const AGGREGATE_OPERATOR: u16 = 1;
pub const OVER_OPERATOR: u16 = 2;
pub const JOIN_OPERATOR: u16 = 3;
/// The rows last seen of an updating view a pipeline reads.
pub const NORMALIZE_OPERATOR: u16 = 4;
/// The normalizers of the two inputs of a join of views.
pub const NORMALIZE_OPERATORS: [u16; 2] = [NORMALIZE_OPERATOR, 6];
/// The copies of each row of a view that stores a changelog without aggregating it.
pub const MATERIALIZE_OPERATOR: u16 = 5;
/// The state table of a top-N.
pub const TOP_OPERATOR: u16 = 7;
/// The rows last passed on of an aggregate whose groups a top-N ranks.
pub const GROUP_CHANGES_OPERATOR: u16 = 8;
/// MATCH_RECOGNIZE's pending rows and open match attempts.
pub const MATCH_OPERATOR: u16 = 9;

pub struct StreamManager {
    kv: Arc<dyn KvStore>,
    state: StateStore,
    signal: Arc<LogSignal>,
    runtime: Mutex<Option<tokio::runtime::Handle>>,
    running: Mutex<HashMap<u32, Running>>,
    metrics: Mutex<HashMap<u32, Arc<Metrics>>>,
    checkpoint_interval_ms: u64,
    /// Partitions of a keyed operator unless its pipeline says otherwise.
    parallelism: usize,
    /// The catalog's models (PREDICT in pipelines).
    models: Mutex<Option<Arc<dyn ModelSource>>>,
    /// Where remote sinks stage and spool their files (`<data dir>/sinks`).
    staging: std::path::PathBuf,
    /// Per materialized view: what its sink and new readers of its changelog share.
    logs: Mutex<HashMap<u32, Arc<LogShared>>>,
    /// Each running pipeline's committed checkpoint epoch, as it changes.
    committed: Mutex<HashMap<u32, tokio::sync::watch::Receiver<u64>>>,
    /// The connector sources being read, one reader each for every pipeline.
    hubs: Arc<super::shared_source::SourceHubs>,
    /// LISTEN / NOTIFY, which `connector = 'notify'` sinks send on.
    pub notifier: Arc<crate::engine::notify::Notifier>,
}

impl std::fmt::Debug for StreamManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamManager({} pipelines)", self.running.lock().len())
    }
}

impl StreamManager {
    pub fn new(
        kv: Arc<dyn KvStore>,
        signal: Arc<LogSignal>,
        checkpoint_interval_ms: u64,
        staging: std::path::PathBuf,
        state_cache_bytes: usize,
        parallelism: usize,
    ) -> Self {
        Self {
            state: StateStore::new(kv.clone(), state_cache_bytes),
            kv,
            signal,
            runtime: Mutex::new(None),
            running: Mutex::new(HashMap::new()),
            metrics: Mutex::new(HashMap::new()),
            checkpoint_interval_ms,
            parallelism,
            models: Mutex::new(None),
            staging,
            logs: Mutex::new(HashMap::new()),
            committed: Mutex::new(HashMap::new()),
            hubs: Default::default(),
            notifier: Default::default(),
        }
    }

    /// Partitions of a keyed operator unless its pipeline says otherwise.
    pub fn parallelism(&self) -> usize {
        self.parallelism
    }

    /// The lookup joins of a pipeline, each with the plan over its rows.
    fn lookup_operators(&self, plan: &plan::PipelinePlan) -> Vec<Box<dyn Operator>> {
        let mut ops: Vec<Box<dyn Operator>> = Vec::new();
        for (join, segment) in &plan.lookups {
            ops.push(Box::new(LookupJoin {
                plan: join.clone(),
                kv: self.kv.clone(),
            }));
            ops.push(Box::new(SegmentOp {
                segment: segment.clone(),
            }));
        }
        ops
    }

    /// What a view's sink and the readers of its changelog share.
    fn log_shared(&self, view: u32) -> Arc<LogShared> {
        self.logs.lock().entry(view).or_default().clone()
    }

    /// What a materialized view's sink and a new reader of its changelog share (SUBSCRIBE).
    pub fn view_log(&self, view: u32) -> Arc<LogShared> {
        self.log_shared(view)
    }

    /// The committed checkpoint epoch of a running pipeline, to wait on.
    pub fn committed(&self, pipeline: u32) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.committed.lock().get(&pipeline).cloned()
    }

    pub fn set_models(&self, models: Arc<dyn ModelSource>) {
        *self.models.lock() = Some(models);
    }

    /// PREDICT and its sibling functions over pins starting at `recorded` (empty: each model
    /// pins its active version when the query is planned). The pins then name the models the
    /// query uses.
    /// `source` overrides where models are found (a session's uncommitted catalog).
    pub fn model_functions(
        &self,
        recorded: &ModelVersions,
        source: Option<Arc<dyn ModelSource>>,
    ) -> (Arc<PinnedModels>, Vec<Arc<ScalarUDF>>) {
        let source = source
            .or_else(|| self.models.lock().clone())
            .unwrap_or_else(|| Arc::new(NoModels));
        let pins = PinnedModels::new(source, recorded);
        let udfs = eddy_udf::predict::model_udfs(pins.clone())
            .into_iter()
            .map(Arc::new)
            .collect();
        (pins, udfs)
    }

    /// Starts every pipeline of `catalog` on `runtime`; later catalog changes start and stop
    /// pipelines through [`StreamManager::reconcile`].
    pub fn start(self: &Arc<Self>, runtime: tokio::runtime::Handle, catalog: &Catalog) {
        if let Err(e) = crate::engine::subscribe::remove_stale(self.kv.as_ref()) {
            tracing::warn!("removing the subscriptions a restart ended: {e}");
        }
        *self.runtime.lock() = Some(runtime);
        self.reconcile(catalog);
    }

    /// Starts a Kafka sink's transactional producer (aborting whatever transaction a crash
    /// left open) and checks the epoch Kafka committed last against the checkpoint: one
    /// behind means the crash came between the checkpoint and Kafka's commit, and the
    /// pipeline must resume from the checkpoint before (returned) to write that epoch again.
    async fn open_kafka_sink(
        &self,
        def: &TableDef,
        mut config: eddy_connectors::kafka_sink::KafkaSinkConfig,
        record: &super::checkpoint::CheckpointRecord,
    ) -> Result<(
        eddy_connectors::kafka_sink::KafkaSink,
        Option<super::checkpoint::CheckpointRecord>,
    )> {
        if !def.kind.query().is_some_and(|q| {
            q.options
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("transactional.id"))
        }) {
            // A sink created again under the same name starts its own epochs.
            config.transactional_id = format!("{}-{}", config.transactional_id, def.id);
        }
        let exactly_once = config.exactly_once;
        let (sink, committed) = tokio::task::spawn_blocking(move || {
            eddy_connectors::kafka_sink::KafkaSink::open(config)
        })
        .await
        .map_err(|e| Error::internal(format!("kafka sink: {e}")))?
        .map_err(|e| Error::connector(format_args!("sink {}", def.name), e))?;
        if !exactly_once {
            return Ok((sink, None));
        }
        let previous = recover(self.kv.get(&previous_checkpoint_key(def.id))?.as_deref())?;
        match kafka_resume(committed, record.epoch, previous.epoch) {
            KafkaResume::Checkpoint => Ok((sink, None)),
            KafkaResume::Previous => {
                tracing::info!(
                    "sink {}: Kafka holds epoch {}, the checkpoint is at {}: writing epoch {} again",
                    def.name,
                    previous.epoch,
                    record.epoch,
                    record.epoch
                );
                Ok((sink, Some(previous)))
            }
            KafkaResume::Unknown => {
                tracing::warn!(
                    "sink {}: Kafka has no committed epoch for transactional id {}, so whether \
                     epoch {} reached it cannot be checked; resuming after it",
                    def.name,
                    def.name,
                    record.epoch
                );
                Ok((sink, None))
            }
            KafkaResume::Mismatch => Err(Error::internal(format!(
                "sink {}: Kafka has committed epoch {} but the last checkpoint is epoch {}; \
                 the sink cannot resume exactly once (was its transactional.id reused?)",
                def.name,
                committed.unwrap_or_default(),
                record.epoch
            ))),
        }
    }

    /// Where a remote sink's committed files wait for upload.
    pub fn spool_dir(&self, id: u32) -> std::path::PathBuf {
        self.staging.join(id.to_string()).join("ready")
    }

    pub fn metrics(&self, id: u32) -> Option<Arc<Metrics>> {
        self.metrics.lock().get(&id).cloned()
    }

    /// Starts pipelines the catalog has and stops those it no longer has.
    pub fn reconcile(self: &Arc<Self>, catalog: &Catalog) {
        let Some(runtime) = self.runtime.lock().clone() else {
            return;
        };
        let wanted: HashMap<u32, Arc<TableDef>> = catalog
            .tables()
            .filter(|t| t.kind.query().is_some())
            .map(|t| (t.id, t.clone()))
            .collect();
        let mut running = self.running.lock();
        let gone: Vec<u32> = running
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            let r = running.remove(&id).expect("listed");
            r.stop.store(true, Ordering::SeqCst);
            self.metrics.lock().remove(&id);
            self.committed.lock().remove(&id);
            let kv = self.kv.clone();
            runtime.spawn(async move {
                let _ = r.supervisor.await;
                // Whatever a stopping stage wrote after DROP's own delete goes too, and the
                // pipeline's positions in the changelogs of views it read.
                let mut ops: Vec<WriteOp> = crate::keys::pipeline_ranges(id)
                    .into_iter()
                    .map(|(start, end)| WriteOp::DeleteRange(start, end))
                    .collect();
                let subs = crate::keys::subscriptions_prefix();
                match kv.scan(&subs, &crate::storage::prefix_end(&subs), usize::MAX) {
                    Ok(pairs) => ops.extend(
                        pairs
                            .into_iter()
                            .filter(|(k, _)| crate::keys::subscriber_of(k) == Some(id))
                            .map(|(k, _)| WriteOp::Delete(k)),
                    ),
                    Err(e) => tracing::warn!("cleanup of dropped pipeline {id}: {e}"),
                }
                if let Err(e) = kv.write(ops, true) {
                    tracing::warn!("cleanup of dropped pipeline {id}: {e}");
                }
            });
        }
        for (id, def) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let metrics = Arc::new(Metrics::default());
            self.metrics.lock().insert(id, metrics.clone());
            let this = self.clone();
            let catalog = catalog.clone();
            let flag = stop.clone();
            let supervisor = runtime.spawn(async move {
                this.supervise(catalog, def, flag, metrics).await;
            });
            running.insert(id, Running { stop, supervisor });
        }
    }

    async fn supervise(
        self: Arc<Self>,
        catalog: Catalog,
        def: Arc<TableDef>,
        stop: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) {
        let mut pause = Duration::from_millis(500);
        while !stop.load(Ordering::SeqCst) {
            metrics.running.store(true, Ordering::SeqCst);
            let result = self.run_once(&catalog, &def, &stop, &metrics).await;
            metrics.running.store(false, Ordering::SeqCst);
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let message = match result {
                Ok(()) => "pipeline stopped".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(
                "pipeline {} failed: {message}; restarting from its last checkpoint in {pause:?}",
                def.name
            );
            *metrics.error.lock() = Some(message);
            metrics.restarts.fetch_add(1, Ordering::Relaxed);
            let deadline = tokio::time::Instant::now() + pause;
            while tokio::time::Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }

    /// Builds the pipeline from its last checkpoint and runs it until it stops or fails.
    async fn run_once(
        &self,
        catalog: &Catalog,
        def: &Arc<TableDef>,
        stop: &Arc<AtomicBool>,
        metrics: &Arc<Metrics>,
    ) -> Result<()> {
        let info = def.kind.query().expect("pipelines are queries").clone();
        let query = plan::parse_query(&info.sql)?;
        let mut record = recover(self.kv.get(&record_key(def.id))?.as_deref())?;
        let sink_config = match &def.kind {
            TableKind::Sink(q) => Some(SinkConfig::from_options(&def.name, &q.options)?),
            _ => None,
        };
        let mut kafka = None;
        if let Some(SinkConfig::Kafka(config)) = &sink_config {
            let (sink, previous) = self.open_kafka_sink(def, config.clone(), &record).await?;
            if let Some(previous) = previous {
                record = previous;
            }
            kafka = Some(sink);
        }
        // The model versions of the checkpoint the pipeline resumes from.
        let (models, udfs) = self.model_functions(&record.models, None);
        let plan = Arc::new(pipeline_plan(catalog, &query, &udfs, &info).await?);
        // A sink's files roll at each checkpoint: its interval defaults to 10 s.
        let default_interval = match &def.kind {
            TableKind::Sink(_) => DEFAULT_SINK_CHECKPOINT_INTERVAL_MS,
            _ => self.checkpoint_interval_ms,
        };
        let interval = option_ms(&info.options, "checkpoint_interval")?.unwrap_or(default_interval);
        let (committed_tx, committed_rx) = tokio::sync::watch::channel(record.epoch);
        self.committed.lock().insert(def.id, committed_rx.clone());
        let mut tasks = tokio::task::JoinSet::new();
        let dead_letters = |source: &TableDef| {
            catalog
                .owned_by(source)
                .into_iter()
                .find(|t| matches!(t.kind, TableKind::DeadLetters { .. }))
        };
        // Each source's channel, then the rest of the pipeline after its first stage.
        let mut source_txs = Vec::new();
        let mut operators: Vec<Box<dyn Operator>> = Vec::new();
        let requested = option_parallelism(&info.options)?.unwrap_or(self.parallelism);
        let partitions = plan.partitions(requested);
        // A parallel aggregate over one appending source also runs copies of the stages
        // before it, each fed batches in turn; otherwise those stages run once and an
        // exchange after them spreads their rows.
        let spread = partitions > 1
            && plan.combined.is_none()
            && plan.view_input != Some(ViewInput::Updates)
            && plan.over.is_none()
            && plan.matcher.is_none();
        let mut partition_inputs: Vec<Vec<mpsc::Receiver<Message>>> =
            (0..partitions).map(|_| Vec::new()).collect();
        // Copies of a stage that run at once each need their own plan: a plan reads its rows
        // from a feed, one slot that a concurrent copy would overwrite.
        let mut copies = vec![plan.clone()];
        if partitions > 1 && (spread || plan.aggregate.is_none()) {
            for _ in 1..partitions {
                copies.push(Arc::new(
                    pipeline_plan(catalog, &query, &udfs, &info).await?,
                ));
            }
        }
        // The keyed stage that runs partitioned: the aggregate, or else OVER.
        let over_partitioned = partitions > 1 && plan.aggregate.is_none();
        let router = || -> Result<Router> {
            match (&plan.aggregate, &plan.over) {
                (Some(agg), _) => Router::new(agg, partitions),
                (None, Some((over, _))) => Over::router(over, partitions),
                (None, None) => Err(Error::internal("partitions without a keyed operator")),
            }
        };
        let stateless = |source: &TableDef, lower: plan::Segment| Stateless {
            lower,
            name: def.name.clone(),
            errors: dead_letters(source),
            metrics: metrics.clone(),
        };
        let mut rx = match &plan.combined {
            None if spread => {
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                source_txs.push(tx);
                let mut spread_txs = Vec::new();
                for copy in &copies {
                    let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
                    spread_txs.push(tx);
                    let mut chain: Vec<Box<dyn Operator>> =
                        vec![Box::new(stateless(&copy.source, copy.lower_segment()))];
                    chain.extend(self.lookup_operators(copy));
                    rx = spawn_chain(&mut tasks, chain, rx, &committed_rx);
                    spawn_exchange(&mut tasks, rx, router()?, &mut partition_inputs);
                }
                tasks.spawn(run_spread(rx, spread_txs));
                // Not read: the partitions' inputs replace it.
                mpsc::channel(1).1
            }
            None => {
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                source_txs.push(tx);
                if plan.view_input == Some(ViewInput::Updates) {
                    operators.push(Box::new(Normalize::new(
                        plan.source.clone(),
                        self.state.table(def.id, NORMALIZE_OPERATOR),
                    )));
                }
                operators.push(Box::new(stateless(&plan.source, plan.lower_segment())));
                operators.extend(self.lookup_operators(&plan));
                rx
            }
            Some(join) => {
                // Each input's stateless plan, then the join of both. A source read by both
                // inputs has one reader, whose messages go to both.
                let mut join_inputs = Vec::new();
                let mut tee = Vec::new();
                for (i, input) in join.inputs.iter().enumerate() {
                    let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
                    match join.shared() {
                        true => tee.push(tx),
                        false => source_txs.push(tx),
                    }
                    if input.view == Some(ViewInput::Updates) {
                        let (next_tx, next_rx) = mpsc::channel(CHANNEL_CAPACITY);
                        let op = Box::new(Normalize::new(
                            input.source.clone(),
                            self.state.table(def.id, NORMALIZE_OPERATORS[i]),
                        ));
                        tasks.spawn(run_operator(op, rx, next_tx, committed_rx.clone()));
                        rx = next_rx;
                    }
                    let (next_tx, next_rx) = mpsc::channel(CHANNEL_CAPACITY);
                    let op = Box::new(stateless(&input.source, input.lower.clone()));
                    tasks.spawn(run_operator(op, rx, next_tx, committed_rx.clone()));
                    join_inputs.push(next_rx);
                }
                if !tee.is_empty() {
                    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                    source_txs.push(tx);
                    tasks.spawn(run_tee(rx, tee));
                }
                let restored: Vec<Option<i64>> = (0..join.inputs.len())
                    .map(|i| record.input(if join.shared() { 0 } else { i }).watermark)
                    .collect();
                let op: Box<dyn Operator> = match &join.op {
                    Combine::Join(plan) => Box::new(IntervalJoin::restore(
                        plan.clone(),
                        self.state.table(def.id, JOIN_OPERATOR),
                        min_watermark(&restored),
                    )?),
                    Combine::Union(schema) => Box::new(Union::new(schema.clone(), join.updates())),
                    Combine::ViewJoin(plan) => Box::new(ChangeJoin::restore(
                        plan.clone(),
                        self.state.table(def.id, JOIN_OPERATOR),
                    )?),
                    Combine::Asof(plan) => Box::new(AsofJoin::restore(
                        plan.clone(),
                        self.state.table(def.id, JOIN_OPERATOR),
                        min_watermark(&restored),
                    )?),
                };
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                tasks.spawn(run_inputs(
                    op,
                    join_inputs,
                    tx,
                    committed_rx.clone(),
                    restored,
                    Barrier::merge,
                ));
                // The plan over the join's rows (no source rows to send to dead letters).
                operators.push(Box::new(SegmentOp {
                    segment: plan.lower_segment(),
                }));
                operators.extend(self.lookup_operators(&plan));
                rx
            }
        };
        if let Some((over, segment)) = &plan.over
            && !over_partitioned
        {
            operators.push(Box::new(Over::restore(
                over.clone(),
                self.state.table(def.id, OVER_OPERATOR),
                record.watermark,
            )?));
            operators.push(Box::new(SegmentOp {
                segment: segment.clone(),
            }));
        }
        if let Some((matcher, segment)) = &plan.matcher {
            operators.push(Box::new(MatchRecognize::restore(
                matcher.clone(),
                self.state.table(def.id, MATCH_OPERATOR),
                record.watermark,
            )?));
            operators.push(Box::new(SegmentOp {
                segment: segment.clone(),
            }));
        }
        // A top-N and the plan above it.
        let top_n = |top: &Arc<TopPlan>, above: &plan::Segment| -> Result<[Box<dyn Operator>; 2]> {
            Ok([
                Box::new(TopN::new(
                    top.clone(),
                    self.state.table(def.id, TOP_OPERATOR),
                )?),
                Box::new(SegmentOp {
                    segment: above.clone(),
                }),
            ])
        };
        if let Some((top, above)) = &plan.top {
            operators.extend(top_n(top, above)?);
        }
        if partitions > 1 && !spread {
            // The stages before the aggregate run once; an exchange spreads their rows.
            rx = spawn_chain(&mut tasks, operators.drain(..), rx, &committed_rx);
            spawn_exchange(&mut tasks, rx, router()?, &mut partition_inputs);
            rx = mpsc::channel(1).1;
        }
        if over_partitioned {
            // Each partition buffers and seals the rows of its PARTITION BY keys, and runs
            // the plan over its results (PREDICT included) before the gather.
            rx = spawn_partitions(
                &mut tasks,
                std::mem::take(&mut partition_inputs),
                |p, n| {
                    let (over, segment) = copies[p]
                        .over
                        .as_ref()
                        .ok_or_else(|| Error::internal("a partitioned OVER without OVER"))?;
                    Ok(vec![
                        Box::new(Over::restore_partition(
                            over.clone(),
                            self.state.table(def.id, OVER_OPERATOR),
                            record.watermark,
                            crate::keys::partition_groups(p, n),
                        )?),
                        Box::new(SegmentOp {
                            segment: segment.clone(),
                        }),
                    ])
                },
                &committed_rx,
                record.watermark,
            )?;
        }
        if let Some(agg) = &plan.aggregate {
            let view = match &def.kind {
                // A sink of a view gets the view's rows instead of storing them.
                TableKind::Sink(q) => ViewWriter::for_sink(
                    def.clone(),
                    super::sinks::emits_updates(agg, q.emit_on_close),
                ),
                _ => ViewWriter::new(def.clone()),
            };
            // Each partition keeps its share of the groups in memory.
            let budget = self.state.cache().budget() / partitions;
            let aggregate = |groups| -> Result<AggregateOp> {
                Ok(match agg.session {
                    Some(_) => AggregateOp::Sessions(SessionAggregator::restore(
                        agg.clone(),
                        self.state.table(def.id, AGGREGATE_OPERATOR),
                        record.watermark,
                        view.clone(),
                    )?),
                    None => AggregateOp::Groups(Aggregator::restore_partition(
                        agg.clone(),
                        self.state.table(def.id, AGGREGATE_OPERATOR),
                        budget,
                        info.emit_on_close,
                        record.watermark,
                        view.clone(),
                        groups,
                    )?),
                })
            };
            match partitions {
                1 => operators.push(Box::new(aggregate(0..crate::keys::KEY_GROUPS)?)),
                _ => {
                    rx = spawn_partitions(
                        &mut tasks,
                        std::mem::take(&mut partition_inputs),
                        |p, n| {
                            Ok(vec![Box::new(aggregate(crate::keys::partition_groups(
                                p, n,
                            ))?)])
                        },
                        &committed_rx,
                        record.watermark,
                    )?;
                }
            }
            match (&agg.top, info.emit_on_close) {
                // A top-N over the groups as they change: their changes, ranked, stored as
                // the view's rows.
                (Some(top), false) => {
                    operators.push(Box::new(GroupChanges::new(
                        agg.schema.clone(),
                        agg.group_exprs.len(),
                        self.state.table(def.id, GROUP_CHANGES_OPERATOR),
                    )?));
                    operators.push(Box::new(SegmentOp {
                        segment: top.below.clone(),
                    }));
                    operators.extend(top_n(&top.top, &top.above)?);
                    operators.push(Box::new(Materialize::new(
                        ViewWriter::new(def.clone()),
                        self.state.table(def.id, MATERIALIZE_OPERATOR),
                    )));
                }
                _ if agg.upper_segment.is_some() => {
                    operators.push(Box::new(PerWindow::new(agg, view.clone(), partitions)?));
                }
                _ => {}
            }
        } else if let (TableKind::Sink(_), true) = (&def.kind, plan.updates()) {
            // A sink of an updating view sends its changes: as upserts to a keyed Kafka
            // topic, as appended rows elsewhere.
            let upsert_key = match &sink_config {
                Some(SinkConfig::Kafka(k)) => k
                    .key_column
                    .as_ref()
                    .and_then(|c| plan.output.index_of(c).ok()),
                _ => None,
            };
            operators.push(Box::new(SinkChanges::new(def.clone(), upsert_key)));
        } else if plan.updates() {
            operators.push(Box::new(Materialize::new(
                ViewWriter::new(def.clone()),
                self.state.table(def.id, MATERIALIZE_OPERATOR),
            )));
        }
        // A view stored as a multiset (`Materialize`) is written with its checkpoints.
        let stores_multiset = match &plan.aggregate {
            Some(agg) => agg.top.is_some() && !info.emit_on_close,
            None => plan.updates() && !matches!(def.kind, TableKind::Sink(_)),
        };
        let rx = spawn_chain(&mut tasks, operators, rx, &committed_rx);
        let mut uploader: Option<tokio::task::JoinHandle<()>> = None;
        let sink_kind = match (&def.kind, sink_config) {
            (TableKind::Stream(q), _) => SinkKind::Stream {
                retention_rows: option_u64(&q.options, "retention_rows")?.unwrap_or(100_000),
            },
            // A view without an aggregation holds every row of its query, in order (its rows
            // are only ever inserted).
            (TableKind::MaterializedView(_), _) if !plan.updates() => SinkKind::Stream {
                retention_rows: u64::MAX,
            },
            (_, Some(SinkConfig::Parquet(config))) => {
                let mut spool_limit = None;
                let (dir, publish) = match config.target {
                    SinkTarget::Local(dir) => (dir.clone(), dir),
                    SinkTarget::Remote { url, settings } => {
                        // Committed files spool locally and upload from there.
                        let staging = self.staging.join(def.id.to_string());
                        let spool = self.spool_dir(def.id);
                        let store =
                            eddy_connectors::store::open_store(&url, &settings).map_err(|e| {
                                Error::connector(
                                    format_args!("sink {}", def.name),
                                    eddy_connectors::Error::Options(e),
                                )
                            })?;
                        let status = metrics.upload.clone();
                        uploader = Some(tokio::spawn(eddy_connectors::parquet_sink::upload(
                            spool.clone(),
                            eddy_connectors::parquet_sink::UploadTarget {
                                store,
                                part_size: config.part_size,
                            },
                            status,
                        )));
                        spool_limit = Some((spool.clone(), config.spool_limit));
                        (staging, spool)
                    }
                };
                SinkKind::Parquet {
                    files: Box::new(
                        eddy_connectors::parquet_sink::ParquetFiles::open(
                            &dir,
                            &publish,
                            &def.name,
                            record.epoch,
                            config.partitioning,
                        )
                        .map_err(|e| Error::connector(format_args!("sink {}", def.name), e))?,
                    ),
                    rollover_bytes: config.rollover_bytes,
                    spool_limit,
                }
            }
            (_, Some(SinkConfig::Kafka(_))) => {
                SinkKind::Kafka(Box::new(kafka.take().expect("opened above")))
            }
            (_, Some(SinkConfig::Notify { channel })) => SinkKind::Notify {
                channel,
                notifier: self.notifier.clone(),
                pending: Vec::new(),
            },
            (_, Some(SinkConfig::Webhook(config))) => {
                let errors = catalog
                    .owned_by(def)
                    .into_iter()
                    .find(|t| matches!(t.kind, TableKind::DeadLetters { .. }))
                    .ok_or_else(|| {
                        Error::internal(format!("webhook sink {} has no errors table", def.name))
                    })?;
                SinkKind::Webhook {
                    hook: Box::new(
                        eddy_connectors::webhook::Webhook::new(config, &def.name)
                            .map_err(|e| Error::connector(format_args!("sink {}", def.name), e))?,
                    ),
                    errors,
                }
            }
            _ => SinkKind::View,
        };
        let sink = Sink {
            pipeline: def.id,
            def: def.clone(),
            kind: sink_kind,
            kv: self.kv.clone(),
            record: record.clone(),
            metrics: metrics.clone(),
            committed: committed_tx,
            log: match &def.kind {
                // Every view keeps a changelog while it has readers: pipelines that read an
                // updating view, and subscriptions (SUBSCRIBE) to any view.
                TableKind::MaterializedView(_) => Some(ViewLog::new(
                    def,
                    self.log_shared(def.id),
                    self.kv.as_ref(),
                )?),
                _ => None,
            },
            reads_views: plan.reads_views(),
            defer_writes: stores_multiset,
        };
        tasks.spawn(sink.run(rx));
        // Windows, OVER and joins emit rows once the watermark passes them: later events
        // for them are late.
        let drop_late = plan.aggregate.as_ref().is_some_and(|a| a.window.is_some())
            || plan.over.is_some()
            || plan.matcher.is_some()
            || plan.combined.as_ref().is_some_and(|c| c.in_event_time());
        // A source of a join (or union) reports its position as its input's.
        let several = plan.combined.is_some();
        // A new reader of an updating view registers in its changelog, from its next entry,
        // and starts with a snapshot of the view's rows.
        let reads_views = plan.reads_views();
        for &(view, input) in &reads_views {
            let resume = record.input(input.unwrap_or(0));
            if resume.positions.contains_key(&0) {
                continue;
            }
            let kv = self.kv.clone();
            let shared = self.log_shared(view);
            let reader = def.id;
            let position = tokio::task::spawn_blocking(move || {
                super::changelog::subscribe(kv.as_ref(), &shared, view, reader)
            })
            .await
            .map_err(|e| Error::internal(format!("changelog subscription: {e}")))??;
            let positions = eddy_connectors::Positions::from([(0, position as i64), (1, 0)]);
            match input {
                None => record.positions = positions,
                Some(i) => {
                    record.inputs.insert(
                        i,
                        super::checkpoint::InputCheckpoint {
                            positions,
                            ..Default::default()
                        },
                    );
                }
            }
        }
        let mut sources = tokio::task::JoinSet::new();
        for (i, (tx, source_def)) in source_txs.into_iter().zip(plan.sources()).enumerate() {
            let input = several.then_some(i);
            let source = self.source_loop(SourceSetup {
                catalog,
                source: &source_def,
                input,
                record: &record,
                interval,
                tx,
                drop_late,
                stop,
                metrics,
                models: models.clone(),
                committed: committed_rx.clone(),
                updates: reads_views.iter().any(|(v, _)| *v == source_def.id),
            })?;
            sources.spawn_blocking(move || source.run());
        }
        *metrics.error.lock() = None;
        // The first stage to fail (or a source) ends the pipeline.
        let result = loop {
            tokio::select! {
                Some(r) = sources.join_next() => {
                    break r.map_err(|e| Error::internal(format!("source thread: {e}"))).and_then(|r| r);
                }
                Some(r) = tasks.join_next() => {
                    match r {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => break Err(e),
                        Err(e) => break Err(Error::internal(format!("pipeline task: {e}"))),
                    }
                }
            }
        };
        // Closing the channels stops the source threads too (they check before each poll).
        tasks.abort_all();
        if let Some(u) = uploader {
            u.abort();
        }
        while tasks.join_next().await.is_some() {}
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while sources.join_next().await.is_some() {}
        })
        .await;
        result
    }
}

/// What a pipeline's source thread is built from.
struct SourceSetup<'a> {
    catalog: &'a Catalog,
    source: &'a Arc<TableDef>,
    /// Which input of a join the source feeds.
    input: Option<usize>,
    record: &'a super::checkpoint::CheckpointRecord,
    interval: u64,
    tx: mpsc::Sender<super::pipeline::Message>,
    drop_late: bool,
    stop: &'a Arc<AtomicBool>,
    metrics: &'a Arc<Metrics>,
    models: Arc<PinnedModels>,
    committed: tokio::sync::watch::Receiver<u64>,
    /// The source is an updating view (read as its changelog).
    updates: bool,
}

impl StreamManager {
    /// The source thread of one input, opened where the checkpoint left it: a source's
    /// connector (or push log), an updating view's snapshot and changelog, or an appending
    /// view's rows in order.
    fn source_loop(&self, setup: SourceSetup<'_>) -> Result<SourceLoop> {
        let source_def = setup.source.clone();
        let source_info = match &source_def.kind {
            TableKind::Source(info) => Some(info),
            TableKind::MaterializedView(_) => None,
            _ => return Err(Error::internal("pipeline source is not a source or view")),
        };
        let owned = setup.catalog.owned_by(&source_def);
        let find = |kind: fn(&TableKind) -> bool| owned.iter().find(|t| kind(&t.kind)).cloned();
        let errors = find(|k| matches!(k, TableKind::DeadLetters { .. }));
        let late = find(|k| matches!(k, TableKind::LateEvents { .. }));
        let watermark_expr = match source_info.and_then(|s| s.watermark.as_ref()) {
            Some(w) => Some(watermark_expr(&source_def, &w.expr, &w.column)?),
            None => None,
        };
        let resume = setup.record.input(setup.input.unwrap_or(0));
        let positions = resume.positions.clone();
        let kv = self.kv.clone();
        let signal = self.signal.clone();
        let log_def = source_def.clone();
        let connector = match source_info {
            Some(info) => info.connector.clone().map(|c| {
                let options = Options::new(
                    info.options
                        .iter()
                        .filter(|(k, _)| {
                            !matches!(
                                k.as_str(),
                                "connector" | "late_events" | "watermark.idle_timeout"
                            )
                        })
                        .cloned(),
                )
                .map_err(|e| Error::connector("source", e))?;
                let spec = SourceSpec {
                    name: source_def.name.clone(),
                    schema: declared_schema(&source_def),
                    options,
                    created_at_ms: info.created_at_ms,
                };
                Ok::<_, Error>((c, spec))
            }),
            None => None,
        }
        .transpose()?;
        let updates = setup.updates;
        let (hubs, source_id) = (self.hubs.clone(), source_def.id);
        let open = Box::new(
            move || -> eddy_connectors::Result<Box<dyn eddy_connectors::Source>> {
                match (connector, updates) {
                    (Some((c, spec)), _) => hubs.open(
                        source_id,
                        &positions,
                        Arc::new(move |at: &eddy_connectors::Positions| {
                            eddy_connectors::open_source(&c, &spec, at)
                        }),
                    ),
                    (None, true) => Ok(Box::new(
                        super::changelog::ViewLogSource::open(log_def, kv, &positions)
                            .map_err(|e| eddy_connectors::Error::External(e.to_string()))?,
                    )),
                    // A push source's log, or an appending view's rows (keyed alike),
                    // shared like a connector.
                    (None, false) => hubs.open(
                        source_id,
                        &positions,
                        Arc::new(move |at: &eddy_connectors::Positions| {
                            Ok(Box::new(LogSource::open(
                                log_def.clone(),
                                log_def.arrow_schema(),
                                kv.clone(),
                                signal.clone(),
                                at,
                            ))
                                as Box<dyn eddy_connectors::Source>)
                        }),
                    ),
                }
            },
        );
        Ok(SourceLoop {
            open,
            tx: setup.tx,
            injector: Injector::new(setup.interval, setup.record, 0),
            watermark: resume.watermark,
            marks: resume.partition_watermarks,
            idle_timeout: source_info.and_then(|info| {
                info.options
                    .iter()
                    .find(|(k, _)| k == "watermark.idle_timeout")
                    .and_then(|(_, v)| eddy_connectors::options::parse_duration(v))
            }),
            last_event: std::collections::HashMap::new(),
            per_partition: source_info.is_some(),
            watermark_expr,
            drop_late: setup.drop_late,
            errors,
            late,
            stop: setup.stop.clone(),
            metrics: setup.metrics.clone(),
            models: setup.models,
            committed: setup.committed,
            input: setup.input,
        })
    }
}

/// Where a Kafka sink resumes, from the epoch Kafka committed last and the pipeline's last
/// two checkpoints.
#[derive(Debug, PartialEq, Eq)]
enum KafkaResume {
    /// Kafka has the last checkpoint's epoch.
    Checkpoint,
    /// The crash came between the checkpoint and Kafka's commit: that epoch's transaction
    /// was aborted, so resume from the checkpoint before and write it again.
    Previous,
    /// Kafka records no epoch after the sink's first checkpoint (expired group offsets, or
    /// a broker that does not keep transactional offsets): resume from the checkpoint.
    Unknown,
    /// Kafka is ahead of, or more than one epoch behind, the checkpoints.
    Mismatch,
}

fn kafka_resume(committed: Option<u64>, checkpoint: u64, previous: u64) -> KafkaResume {
    match committed {
        Some(c) if c == checkpoint => KafkaResume::Checkpoint,
        Some(c) if c + 1 == checkpoint && previous == c => KafkaResume::Previous,
        // Before the first checkpoint there is nothing to check.
        None if checkpoint == 0 => KafkaResume::Checkpoint,
        // The first transaction may have been lost with the crash.
        None if checkpoint == 1 && previous == 0 => KafkaResume::Previous,
        None => KafkaResume::Unknown,
        Some(_) => KafkaResume::Mismatch,
    }
}

/// Where no engine provides models (unit tests).
#[derive(Debug)]
struct NoModels;

impl ModelSource for NoModels {
    fn active_version(&self, _name: &str) -> Option<u32> {
        None
    }
    fn has_version(&self, _name: &str, _version: u32) -> bool {
        false
    }
    fn load(
        &self,
        name: &str,
        _version: u32,
    ) -> std::result::Result<eddy_udf::predict::Resolved, String> {
        Err(format!("model \"{name}\" does not exist"))
    }
}

/// The plan a pipeline runs: its HOP windows in panes if it was created so (views created
/// before panes keep a group per window in their state).
async fn pipeline_plan(
    catalog: &Catalog,
    query: &datafusion::sql::sqlparser::ast::Query,
    udfs: &[Arc<ScalarUDF>],
    info: &QueryInfo,
) -> Result<plan::PipelinePlan> {
    let plan = plan::plan_with(catalog, query, udfs, &info.options).await?;
    match info.panes {
        true => plan.with_panes(),
        false => Ok(plan),
    }
}

fn option<'a>(options: &'a [(String, String)], key: &str) -> Option<&'a str> {
    options
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Runs `ops` one after the other after `rx`; returns the last one's output.
fn spawn_chain(
    tasks: &mut tokio::task::JoinSet<Result<()>>,
    ops: impl IntoIterator<Item = Box<dyn Operator>>,
    mut rx: mpsc::Receiver<Message>,
    committed: &tokio::sync::watch::Receiver<u64>,
) -> mpsc::Receiver<Message> {
    for op in ops {
        let (tx, next) = mpsc::channel(CHANNEL_CAPACITY);
        tasks.spawn(run_operator(op, rx, tx, committed.clone()));
        rx = next;
    }
    rx
}

/// Sends `rx`'s rows to the partitions that own them: one more input for each partition.
fn spawn_exchange(
    tasks: &mut tokio::task::JoinSet<Result<()>>,
    rx: mpsc::Receiver<Message>,
    router: Router,
    partition_inputs: &mut [Vec<mpsc::Receiver<Message>>],
) {
    let mut outputs = Vec::with_capacity(partition_inputs.len());
    for inputs in partition_inputs.iter_mut() {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        outputs.push(tx);
        inputs.push(rx);
    }
    tasks.spawn(run_exchange(rx, router, outputs));
}

/// Runs the partitions of a keyed stage and a gather stage after them; returns the gathered
/// output. Partition `p` of `n` is the operators `make(p, n)` in a chain, the first taking
/// the rows of its key groups from every exchange (`inputs[p]`); the partitions' barriers and
/// watermarks are aligned again by the gather stage.
fn spawn_partitions(
    tasks: &mut tokio::task::JoinSet<Result<()>>,
    inputs: Vec<Vec<mpsc::Receiver<Message>>>,
    mut make: impl FnMut(usize, usize) -> Result<Vec<Box<dyn Operator>>>,
    committed: &tokio::sync::watch::Receiver<u64>,
    watermark: Option<i64>,
) -> Result<mpsc::Receiver<Message>> {
    let n = inputs.len();
    let mut outputs = Vec::with_capacity(n);
    for (p, from) in inputs.into_iter().enumerate() {
        let mut chain = make(p, n)?.into_iter();
        let first = chain
            .next()
            .ok_or_else(|| Error::internal("an empty partition"))?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let restored = vec![watermark; from.len()];
        tasks.spawn(run_inputs(
            first,
            from,
            tx,
            committed.clone(),
            restored,
            Barrier::merge_copies,
        ));
        outputs.push(spawn_chain(tasks, chain, rx, committed));
    }
    let (tx, gathered) = mpsc::channel(CHANNEL_CAPACITY);
    tasks.spawn(run_inputs(
        Box::new(Gather),
        outputs,
        tx,
        committed.clone(),
        vec![watermark; n],
        Barrier::merge_copies,
    ));
    Ok(gathered)
}

/// A pipeline's `parallelism` option: the partitions of its keyed operators.
pub fn option_parallelism(options: &[(String, String)]) -> Result<Option<usize>> {
    let max = crate::limits::MAX_PARALLELISM;
    option_u64(options, "parallelism")?
        .map(|n| match n as usize {
            n @ 1..=crate::limits::MAX_PARALLELISM => Ok(n),
            _ => Err(Error::user(
                crate::error::sqlstate::INVALID_PARAMETER_VALUE,
                format!("option \"parallelism\" must be between 1 and {max}, not {n}"),
            )),
        })
        .transpose()
}

pub fn option_u64(options: &[(String, String)], key: &str) -> Result<Option<u64>> {
    option(options, key)
        .map(|v| {
            v.trim().parse().map_err(|_| {
                Error::user(
                    crate::error::sqlstate::INVALID_PARAMETER_VALUE,
                    format!("invalid value for option \"{key}\": \"{v}\""),
                )
            })
        })
        .transpose()
}

pub fn option_ms(options: &[(String, String)], key: &str) -> Result<Option<u64>> {
    option(options, key)
        .map(|v| {
            eddy_connectors::options::parse_duration(v)
                .map(|d| d.as_millis() as u64)
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    Error::user(
                        crate::error::sqlstate::INVALID_PARAMETER_VALUE,
                        format!(
                            "invalid value for option \"{key}\": \"{v}\" (expected e.g. 500ms, 1s)"
                        ),
                    )
                })
        })
        .transpose()
}

/// The source's columns with NOT NULL as non-nullable fields (what connectors check).
pub fn declared_schema(def: &TableDef) -> Arc<Schema> {
    Arc::new(Schema::new(
        def.columns
            .iter()
            .map(|c| c.ty.arrow_field(&c.name, c.nullable))
            .collect::<Vec<Field>>(),
    ))
}

/// Plans the WATERMARK expression over the source's columns.
pub fn watermark_expr(
    def: &TableDef,
    sql: &str,
    column: &str,
) -> Result<(Arc<dyn datafusion::physical_plan::PhysicalExpr>, usize)> {
    let index = def.column_index(column).ok_or_else(|| {
        Error::user(
            crate::error::sqlstate::UNDEFINED_COLUMN,
            format!("column \"{column}\" of the WATERMARK does not exist"),
        )
    })?;
    let schema = DFSchema::try_from(def.arrow_schema().as_ref().clone())?;
    let state = SessionContext::new().state();
    let expr = state.create_logical_expr(sql, &schema)?;
    let physical = state.create_physical_expr(expr, &schema)?;
    Ok((physical, index))
}

#[cfg(test)]
mod tests {
    use super::{KafkaResume, kafka_resume};

    #[test]
    fn a_kafka_sink_resumes_where_kafka_and_the_checkpoints_agree() {
        use KafkaResume::*;
        // (Kafka's epoch, last checkpoint, the one before) → where to resume.
        for (committed, checkpoint, previous, expected) in [
            (None, 0, 0, Checkpoint),
            (Some(7), 7, 6, Checkpoint),
            // Crash after checkpoint 8 was written, before Kafka committed epoch 8.
            (Some(7), 8, 7, Previous),
            (None, 1, 0, Previous),
            (None, 9, 8, Unknown),
            (Some(9), 7, 6, Mismatch),
            (Some(5), 8, 7, Mismatch),
        ] {
            assert_eq!(
                kafka_resume(committed, checkpoint, previous),
                expected,
                "Kafka {committed:?}, checkpoints {checkpoint} and {previous}"
            );
        }
    }
}
