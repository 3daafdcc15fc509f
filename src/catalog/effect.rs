//! [`FhirEffectExec`]: the plan of a table function that changes something (`fhir_refresh`,
//! `fhir_add_view`). Planning, `EXPLAIN` included, only checks and describes the change; it
//! happens when the plan runs.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::internal_err;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::future::BoxFuture;

/// The change a [`FhirEffectExec`] makes, called when its stream is first polled: its future
/// returns the rows telling what it did (in the table function's full schema).
pub(crate) type Effect = Arc<dyn Fn() -> BoxFuture<'static, DfResult<RecordBatch>> + Send + Sync>;

/// A leaf with one partition of one batch: the rows of its [`Effect`], made when its stream is
/// first polled. `EXPLAIN` shows what it would do, for example
///
/// ```text
/// FhirEffectExec: action=refresh, catalog=fhir, types=[Patient]
/// ```
///
/// Every execution makes the change again, as DataFusion's `DataSinkExec` writes again: a plan
/// is a description of work that DataFusion may copy (`replace_children`, `reset_state`) and
/// run again (recursive queries), and both changes may be repeated (a refresh exports what
/// changed since, a view replaces the one of its name). Dropping the stream drops the change
/// in progress (a refresh withdraws from its export, cancelled when no one else waits for it).
#[derive(Clone)]
pub(crate) struct FhirEffectExec {
    action: &'static str,
    details: Vec<(&'static str, String)>,
    projection: Option<Vec<usize>>,
    effect: Effect,
    properties: Arc<PlanProperties>,
}

impl FhirEffectExec {
    /// The plan of `effect`, named `action` and described by `details` in `EXPLAIN`, whose rows
    /// have `schema` and are projected to `projection`.
    pub(crate) fn try_new(
        action: &'static str,
        details: Vec<(&'static str, String)>,
        schema: &SchemaRef,
        projection: Option<&Vec<usize>>,
        effect: Effect,
    ) -> DfResult<Self> {
        let schema = match projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => Arc::clone(schema),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            action,
            details,
            projection: projection.cloned(),
            effect,
            properties: Arc::new(properties),
        })
    }
}

impl fmt::Debug for FhirEffectExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FhirEffectExec")
            .field("action", &self.action)
            .field("details", &self.details)
            .field("projection", &self.projection)
            .finish_non_exhaustive()
    }
}

impl DisplayAs for FhirEffectExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (start, separator) = match t {
            DisplayFormatType::TreeRender => ("", "\n"),
            _ => ("FhirEffectExec: ", ", "),
        };
        write!(f, "{start}action={}", self.action)?;
        for (key, value) in &self.details {
            write!(f, "{separator}{key}={value}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for FhirEffectExec {
    fn name(&self) -> &str {
        "FhirEffectExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return internal_err!("FhirEffectExec has no children, got {}", children.len());
        }
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("FhirEffectExec has one partition, got partition {partition}");
        }
        let (effect, projection) = (Arc::clone(&self.effect), self.projection.clone());
        // The stream is polled later, outside the statement's task: it keeps its export gate.
        let gate = super::gate::current();
        // The effect starts when the stream is polled, not when it is made.
        let stream = futures::stream::once(async move {
            let batch = super::gate::carried(gate, effect()).await?;
            Ok(match projection {
                Some(p) => batch.project(&p)?,
                None => batch,
            })
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}
