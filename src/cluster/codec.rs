//! [`FhirCodec`]: how fhirflight's plan nodes travel between the coordinator, the scheduler and
//! the executors.

use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use super::convert::ConvertExec;
use crate::catalog::FhirScanExec;

/// The first byte of a node this codec wrote: one of fhirflight's, or Ballista's (its shuffle
/// stages), whose own decoder would take any bytes for its messages.
const FHIR_SCAN: u8 = 1;
const BALLISTA: u8 = 2;
const CONVERT: u8 = 3;

/// The physical extension codec of a fhirflight cluster: [`FhirScanExec`] as its resource type,
/// snapshot and export filters (its Parquet scan, the one child, is DataFusion's own and travels
/// as such), the conversion of an export's files ([`super::Cluster::export`]) as its tasks, and
/// every other node as Ballista's codec writes it. The coordinator, the scheduler
/// and every executor use it ([`super::Cluster`], [`super::SchedulerOptions`],
/// [`super::ExecutorOptions`]).
#[derive(Debug, Default)]
pub struct FhirCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

/// What a [`FhirScanExec`] carries to another machine (its lease stays with the coordinator,
/// which holds it while the distributed statement runs).
#[derive(Serialize, Deserialize)]
struct ScanNode {
    resource_type: String,
    snapshot: String,
    pushed: Vec<String>,
}

impl PhysicalExtensionCodec for FhirCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match buf.split_first() {
            Some((&FHIR_SCAN, node)) => {
                let node: ScanNode = serde_json::from_slice(node)
                    .map_err(|e| DataFusionError::Internal(format!("a FhirScanExec: {e}")))?;
                let [input] = inputs else {
                    return Err(DataFusionError::Internal(format!(
                        "a FhirScanExec has one input, got {}",
                        inputs.len()
                    )));
                };
                Ok(Arc::new(FhirScanExec::received(
                    Arc::clone(input),
                    node.resource_type,
                    node.snapshot,
                    node.pushed,
                )))
            }
            Some((&CONVERT, [])) => match inputs {
                [tasks] => Ok(Arc::new(ConvertExec::new(Arc::clone(tasks)))),
                _ => Err(DataFusionError::Internal(format!(
                    "a ConvertExec has one input, got {}",
                    inputs.len()
                ))),
            },
            Some((&BALLISTA, node)) => {
                self.ballista
                    .try_decode(node, inputs, ctx, proto_converter)
            }
            _ => Err(DataFusionError::Internal(
                "a plan node of no fhirflight codec (a coordinator, scheduler or executor of another version?)".into(),
            )),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(scan) = node.downcast_ref::<FhirScanExec>() {
            let node = ScanNode {
                resource_type: scan.resource_type().to_owned(),
                snapshot: scan.snapshot_id().to_owned(),
                pushed: scan.pushed().to_vec(),
            };
            buf.push(FHIR_SCAN);
            return serde_json::to_writer(buf, &node)
                .map_err(|e| DataFusionError::Internal(format!("a FhirScanExec: {e}")));
        }
        if node.is::<ConvertExec>() {
            // Its tasks are its input's rows.
            buf.push(CONVERT);
            return Ok(());
        }
        buf.push(BALLISTA);
        self.ballista.try_encode(node, buf, proto_converter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_plan::displayable;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::prelude::SessionContext;
    use datafusion_proto::physical_plan::{AsExecutionPlan, DefaultPhysicalProtoConverter};
    use datafusion_proto::protobuf::PhysicalPlanNode;

    #[test]
    fn a_scan_travels_with_its_snapshot_and_filters_and_strange_bytes_are_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
        let scan = Arc::new(FhirScanExec::received(
            Arc::new(EmptyExec::new(schema)),
            "Observation".into(),
            "20240101120000000-1a2b3c4d".into(),
            vec!["_typeFilter=Observation?code=8867-4".into()],
        ));
        let codec = FhirCodec::default();
        let node = PhysicalPlanNode::try_from_physical_plan(scan, &codec).unwrap();
        let ctx = SessionContext::new().task_ctx();
        let received = node.try_into_physical_plan(&ctx, &codec).unwrap();
        let text = displayable(received.as_ref()).indent(false).to_string();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "FhirScanExec: type=Observation, snapshot=20240101120000000-1a2b3c4d, \
                 pushed=[_typeFilter=Observation?code=8867-4]",
                "  EmptyExec"
            ]
        );
        let converter = DefaultPhysicalProtoConverter {};
        for strange in [&[][..], &[9, 1, 2], &[FHIR_SCAN, b'{']] {
            let err = codec
                .try_decode(strange, &[], &ctx, &converter)
                .unwrap_err();
            assert!(matches!(err, DataFusionError::Internal(_)), "{err}");
        }
    }
}
