//! MATCH_RECOGNIZE as a node of a DataFusion physical plan, over its input's plan.
//!
//! Executed by DataFusion (a batch query) it reads its whole input and matches each partition
//! to its end ([`run_batch`]). A streaming query's planner cuts it out of the plan instead
//! (`stream/plan/match_recognize.rs`): its input becomes the stateless plan over the source,
//! the node the streaming operator, and the plan above it a segment over the operator's rows.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PhysicalExpr, PlanProperties, ReplaceChildrenOptions,
};

use super::run::{MatchPlan, run_batch};

#[derive(Debug)]
pub struct MatchRecognizeExec {
    pub input: Arc<dyn ExecutionPlan>,
    pub plan: Arc<MatchPlan>,
    properties: Arc<PlanProperties>,
}

impl MatchRecognizeExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, plan: Arc<MatchPlan>) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(plan.output.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            plan,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for MatchRecognizeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MatchRecognizeExec: {}", self.plan.describe())
    }
}

impl ExecutionPlan for MatchRecognizeExec {
    fn name(&self) -> &str {
        "MatchRecognizeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|_| {
            datafusion::error::DataFusionError::Internal("MatchRecognizeExec has one input".into())
        })?;
        Ok(Arc::new(Self::new(input, self.plan.clone())))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "MatchRecognizeExec has one partition, not {partition}"
            )));
        }
        let input = self.input.clone();
        let plan = self.plan.clone();
        let stream = futures::stream::once(async move {
            let merged = match input.properties().output_partitioning().partition_count() {
                1 => input,
                _ => Arc::new(
                    datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(
                        input,
                    ),
                ) as Arc<dyn ExecutionPlan>,
            };
            let batches = datafusion::physical_plan::collect(merged, context).await?;
            run_batch(plan, &batches).map_err(crate::error::to_df)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.plan.output.clone(),
            stream,
        )))
    }
}
