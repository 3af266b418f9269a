//! MATCH_RECOGNIZE in a streaming query: the clause's input planned over the source, the
//! clause compiled against it, and the plan cut at the [`MatchRecognizeExec`] DataFusion
//! planned for it: the plan below becomes the stateless stages before the operator, the plan
//! above a segment over a feed of its rows.

use std::sync::Arc;

use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;

use super::{Segment, cut_first};
use crate::cep::exec::MatchRecognizeExec;
use crate::cep::run::MatchPlan;
use crate::error::Result;

/// A MATCH_RECOGNIZE stage with the plan above it.
pub type MatchStage = (Arc<MatchPlan>, Segment);

/// The plan with its (one) MATCH_RECOGNIZE cut out: the plan below it, and the stage with the
/// plan above it.
pub(super) fn cut_match(
    root: &Arc<dyn ExecutionPlan>,
    ctx: &Arc<TaskContext>,
) -> Result<(Arc<dyn ExecutionPlan>, Option<MatchStage>)> {
    let found = cut_first(root, |node| {
        Ok(node
            .downcast_ref::<MatchRecognizeExec>()
            .map(|m| (m.plan.clone(), m.input.clone())))
    })?;
    let Some((above, feed, (plan, below))) = found else {
        return Ok((root.clone(), None));
    };
    if count(&below) > 0 || count(&above) > 0 {
        return Err(super::not_supported(
            "two MATCH_RECOGNIZE clauses in one query (make a stream of the first one's rows)",
        ));
    }
    Ok((
        below,
        Some((
            plan,
            Segment {
                plan: above,
                feed,
                task_ctx: ctx.clone(),
            },
        )),
    ))
}

fn count(plan: &Arc<dyn ExecutionPlan>) -> usize {
    usize::from(plan.is::<MatchRecognizeExec>())
        + plan.children().iter().map(|c| count(c)).sum::<usize>()
}
