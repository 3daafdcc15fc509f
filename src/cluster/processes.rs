//! The cluster's processes: a Ballista scheduler and Ballista executors that know fhirflight's
//! plan nodes ([`FhirCodec`]) and read the tables' location with the clouds' standard
//! credentials ([`CloudRegistry`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::ExecutorRegistration;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::scheduler::{
    ExecutorOperatingSystemSpecification, ExecutorSpecification,
};
use ballista_core::serde::{BallistaCodec, BallistaLogicalExtensionCodec};
use ballista_core::utils::{
    GrpcServerConfig, create_grpc_server, default_config_producer, default_session_builder,
};
use ballista_core::{BALLISTA_PROTOCOL_VERSION, ConfigProducer, RuntimeProducer};
use ballista_executor::execution_loop::poll_loop;
use ballista_executor::executor::Executor;
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::health::ExecutorHealth;
use ballista_executor::metrics::LoggingMetricsCollector;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tokio::net::TcpListener;

use super::{CloudRegistry, Cluster, FhirCodec};
use crate::{Error, Result};

/// How a scheduler is run ([`serve_scheduler`]).
///
/// ```
/// use std::time::Duration;
/// use fhirflight::cluster::SchedulerOptions;
///
/// let options = SchedulerOptions::default().with_executor_timeout(Duration::from_secs(20));
/// assert_eq!(options.executor_timeout(), Duration::from_secs(20));
/// ```
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    executor_timeout: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            executor_timeout: Duration::from_secs(180),
        }
    }
}

impl SchedulerOptions {
    /// How long an executor may go without a word before it is taken for dead and its tasks
    /// run elsewhere (default 180 s, Ballista's; at least 2 s).
    pub fn with_executor_timeout(self, executor_timeout: Duration) -> Self {
        Self {
            executor_timeout: executor_timeout.max(Duration::from_secs(2)),
        }
    }

    /// See [`with_executor_timeout`](Self::with_executor_timeout).
    pub fn executor_timeout(&self) -> Duration {
        self.executor_timeout
    }
}

/// Runs a Ballista scheduler on `listener` until it fails: it plans the stages of the plans
/// coordinators submit ([`Cluster`]) and hands their tasks to the executors that ask for work
/// (Ballista's pull scheduling: executors need no port of their own open to the scheduler).
pub async fn serve_scheduler(listener: TcpListener, options: SchedulerOptions) -> Result<()> {
    let address = listener
        .local_addr()
        .map_err(|e| Error::config_with("the scheduler's listener", e))?;
    let timeout = options.executor_timeout.as_secs();
    let mut config = SchedulerConfig::default()
        .with_scheduler_policy(TaskSchedulingPolicy::PullStaged)
        .with_hostname(address.ip().to_string())
        .with_port(address.port());
    config.bind_host = address.ip().to_string();
    config.executor_timeout_seconds = timeout;
    config.expire_dead_executor_interval_seconds = (timeout / 4).max(1);
    config.no_executors_grace_period_seconds = timeout;
    config.override_physical_codec = Some(Arc::new(FhirCodec::default()));
    // Decoding a plan opens the object stores of its files.
    let runtime = cloud_runtime(None)?;
    config.override_session_builder = Some(Arc::new(move |config| {
        let state = default_session_builder(config)?;
        Ok(SessionStateBuilder::new_from_existing(state)
            .with_runtime_env(Arc::clone(&runtime))
            .build())
    }));
    let failed = |e: ballista_core::error::BallistaError| {
        Error::config_with(format!("the scheduler on {address}"), e)
    };
    config.validate().map_err(failed)?;
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(failed)?;
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config))
            .await
            .map_err(failed)?;
    start_grpc_service_with_listener(listener, scheduler)
        .await
        .map_err(failed)
}

/// How an executor is run ([`serve_executor`]).
///
/// ```
/// use fhirflight::cluster::{Cluster, ExecutorOptions};
///
/// let scheduler = Cluster::new("df://127.0.0.1:50050")?;
/// let options = ExecutorOptions::new(scheduler).with_task_slots(2).with_host("10.0.0.7");
/// assert_eq!(options.task_slots(), 2);
/// # Ok::<(), fhirflight::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    scheduler: Cluster,
    task_slots: usize,
    host: Option<String>,
    work_dir: Option<PathBuf>,
    memory_limit: Option<usize>,
}

impl ExecutorOptions {
    /// An executor of the cluster whose scheduler is `scheduler`, with a task slot per core.
    pub fn new(scheduler: Cluster) -> Self {
        Self {
            scheduler,
            task_slots: std::thread::available_parallelism().map_or(2, usize::from),
            host: None,
            work_dir: None,
            memory_limit: None,
        }
    }

    /// How many tasks run at once (at least one).
    pub fn with_task_slots(self, task_slots: usize) -> Self {
        Self {
            task_slots: task_slots.max(1),
            ..self
        }
    }

    /// See [`with_task_slots`](Self::with_task_slots).
    pub fn task_slots(&self) -> usize {
        self.task_slots
    }

    /// The host name or address others (coordinators, other executors) reach this executor
    /// at; default: the address it listens on.
    pub fn with_host(self, host: impl Into<String>) -> Self {
        Self {
            host: Some(host.into()),
            ..self
        }
    }

    /// The bytes its running tasks may hold at once (default: no limit); beyond it sorts, joins
    /// and aggregates spill to temporary files, and what cannot spill fails its task.
    pub fn with_memory_limit(self, memory_limit: Option<usize>) -> Self {
        Self {
            memory_limit,
            ..self
        }
    }

    /// Where the executor keeps the shuffle files of its tasks; default: a temporary folder,
    /// removed when it stops.
    pub fn with_work_dir(self, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            work_dir: Some(work_dir.into()),
            ..self
        }
    }
}

/// Runs a Ballista executor until it fails: it serves its tasks' results over Arrow Flight on
/// `listener`, asks the scheduler for work and runs the tasks it gets, reading the tables'
/// location (`s3://`, `gs://`, `az://`) with the credentials of each cloud's standard
/// environment.
pub async fn serve_executor(listener: TcpListener, options: ExecutorOptions) -> Result<()> {
    let address: SocketAddr = listener
        .local_addr()
        .map_err(|e| Error::config_with("the executor's listener", e))?;
    let scheduler_url = options.scheduler.scheduler().to_owned();
    let scheduler = SchedulerGrpcClient::connect(scheduler_url.clone())
        .await
        .map_err(|e| Error::config_with(format!("the scheduler at {scheduler_url}"), e))?;
    let temporary = match &options.work_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("fhirflight-executor")
                .tempdir()
                .map_err(|e| Error::io(std::env::temp_dir(), e))?,
        ),
    };
    let work_dir = options
        .work_dir
        .clone()
        .or_else(|| temporary.as_ref().map(|t| t.path().to_owned()))
        .unwrap_or_default();
    let registration = ExecutorRegistration {
        id: uuid::Uuid::new_v4().to_string(),
        host: Some(options.host.clone().unwrap_or(address.ip().to_string())),
        port: u32::from(address.port()),
        // Only used by push scheduling, which fhirflight's scheduler does not use.
        grpc_port: 0,
        specification: Some(
            ExecutorSpecification::default()
                .with_vcores(options.task_slots as u32)
                .into(),
        ),
        os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
        ballista_protocol_version: BALLISTA_PROTOCOL_VERSION,
    };
    let runtime = cloud_runtime(options.memory_limit)?;
    let runtime_producer: RuntimeProducer = Arc::new(move |_| Ok(Arc::clone(&runtime)));
    let config_producer: ConfigProducer = Arc::new(default_config_producer);
    let functions =
        BallistaFunctionRegistry::from(&SessionStateBuilder::new().with_default_features().build());
    let work = work_dir.display().to_string();
    let executor = Arc::new(Executor::with_default_execution_engine(
        registration,
        &work,
        runtime_producer,
        config_producer,
        Arc::new(functions),
        Arc::new(LoggingMetricsCollector::default()),
        options.task_slots,
    ));
    let size = default_config_producer().ballista_grpc_client_max_message_size();
    let results = FlightServiceServer::new(BallistaFlightService::new(work))
        .max_decoding_message_size(size)
        .max_encoding_message_size(size);
    let serving = create_grpc_server(&GrpcServerConfig::default())
        .add_service(results)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let codec: BallistaCodec<LogicalPlanNode, PhysicalPlanNode> = BallistaCodec::new(
        Arc::new(BallistaLogicalExtensionCodec::default()),
        Arc::new(FhirCodec::default()),
    );
    let polling = poll_loop(
        scheduler,
        executor,
        codec,
        None,
        None,
        ExecutorHealth::new(),
    );
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::config(format!("the executor on {address}: {what}: {e}"))
    };
    let result = tokio::select! {
        served = serving => served.map_err(|e| failed("serving results", &e)),
        polled = polling => polled.map_err(|e| failed("asking the scheduler for work", &e)),
    };
    drop(temporary);
    result
}

/// A runtime whose object stores are [`CloudRegistry`], its tasks sharing `memory_limit` bytes:
/// the scheduler's and the executors'.
fn cloud_runtime(memory_limit: Option<usize>) -> Result<Arc<RuntimeEnv>> {
    let mut runtime =
        RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(CloudRegistry::default()));
    if let Some(limit) = memory_limit {
        runtime = runtime.with_memory_pool(crate::catalog::memory_pool(limit));
    }
    runtime
        .build_arc()
        .map_err(|e| Error::config_with("a cluster process's runtime", e))
}
