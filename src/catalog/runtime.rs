//! [`QueryRuntime`]: the threads that plan and run statements, apart from the caller's.

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Stream, StreamExt};
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// The stack of a query thread. DataFusion recurses over plans and expressions while planning,
/// optimizing and evaluating; this holds statements of [`super::MAX_STATEMENT_DEPTH`] levels
/// with room to spare (the stack is reserved, not committed: untouched pages cost nothing).
const STACK_SIZE: usize = 256 * 1024 * 1024;

/// Record batches handed from the query threads to the caller ahead of its reading them.
const BUFFERED_BATCHES: usize = 2;

/// A memory pool of `limit` bytes for the statements of a session or an executor: sorts, joins
/// and aggregates spill beyond their fair share, and what cannot spill fails with "Resources
/// exhausted" naming the 5 largest consumers, instead of taking the machine's memory.
///
/// ```
/// use datafusion::execution::runtime_env::RuntimeEnvBuilder;
/// use fhirflight::catalog::memory_pool;
///
/// let runtime = RuntimeEnvBuilder::new().with_memory_pool(memory_pool(512 << 20)).build()?;
/// assert_eq!(runtime.memory_pool.reserved(), 0);
/// # Ok::<(), datafusion::error::DataFusionError>(())
/// ```
pub fn memory_pool(limit: usize) -> Arc<dyn MemoryPool> {
    let top = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
    Arc::new(TrackConsumersPool::new(FairSpillPool::new(limit), top))
}

/// A tokio runtime of its own for planning and running SQL statements.
///
/// A server runs its network side (gRPC, logins, health, signals) on one runtime and statements
/// on this one, so that statements busy on every core still leave the server answering, a
/// client that goes away stops its statement (dropping what [`run`](Self::run) or
/// [`execute`](Self::execute) returned aborts the task), and deep statements meet a stack made
/// for them rather than a network worker's. Cheap to clone; the threads stop when the last
/// clone is dropped.
///
/// ```
/// # async fn demo() -> datafusion::error::Result<()> {
/// use datafusion::prelude::SessionContext;
/// use fhirflight::catalog::QueryRuntime;
///
/// let queries = QueryRuntime::try_new(2)?;
/// let ctx = SessionContext::new();
/// let stream = queries
///     .execute(async move { ctx.sql("SELECT 1 AS one").await?.execute_stream().await })
///     .await?;
/// assert_eq!(stream.schema().field(0).name(), "one");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct QueryRuntime {
    inner: Arc<Threads>,
}

#[derive(Debug)]
struct Threads {
    handle: Handle,
    /// Cancelled by [`QueryRuntime::stop`].
    stopped: CancellationToken,
    /// Taken only when dropped.
    runtime: Option<Runtime>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        // Dropping a runtime blocks on its tasks, which an async caller may not do; the tasks
        // are cancelled instead (they stop at their next await).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl QueryRuntime {
    /// A runtime of `threads` worker threads (at least one), named `fhirflight-query`.
    pub fn try_new(threads: usize) -> Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("fhirflight-query")
            .thread_stack_size(STACK_SIZE)
            .enable_all()
            .build()?;
        Ok(Self {
            inner: Arc::new(Threads {
                handle: runtime.handle().clone(),
                stopped: CancellationToken::new(),
                runtime: Some(runtime),
            }),
        })
    }

    /// A runtime with a worker thread per core.
    pub fn try_default() -> Result<Self> {
        Self::try_new(std::thread::available_parallelism().map_or(2, usize::from))
    }

    fn handle(&self) -> &Handle {
        &self.inner.handle
    }

    /// The tasks alive on the query threads: running statements and the tasks they spawned
    /// (0 when idle).
    pub fn active_tasks(&self) -> usize {
        self.handle().metrics().num_alive_tasks()
    }

    /// Cancels every statement running on these threads, and every one started later: their
    /// callers get an error (a server's shutdown, once its grace is over).
    pub fn stop(&self) {
        self.inner.stopped.cancel();
    }

    /// Runs `future` on the query threads and returns its output; dropping the returned future
    /// aborts it. A panic in it becomes an error, not a crash of the caller.
    pub async fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let stopped = self.inner.stopped.clone();
        let mut task = AbortOnDrop(self.handle().spawn(async move {
            tokio::select! {
                biased;
                () = stopped.cancelled() => Err(stopping()),
                output = future => output,
            }
        }));
        (&mut task.0).await.map_err(joined)?
    }

    /// Plans a stream with `plan` and polls it on the query threads, handing its batches over
    /// through a small buffer (so a slow reader slows the query rather than filling memory).
    /// Dropping the returned stream, or this future before it resolves, stops the query.
    pub async fn execute(
        &self,
        plan: impl Future<Output = Result<SendableRecordBatchStream>> + Send + 'static,
    ) -> Result<SendableRecordBatchStream> {
        let (schema_tx, schema_rx) = oneshot::channel();
        let (batch_tx, batch_rx) = mpsc::channel(BUFFERED_BATCHES);
        let stopped = self.inner.stopped.clone();
        let task = AbortOnDrop(self.handle().spawn(async move {
            let planned = tokio::select! {
                biased;
                () = stopped.cancelled() => return Err(stopping()),
                planned = plan => planned,
            };
            let mut stream = match planned {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = schema_tx.send(Err(e));
                    return Ok(());
                }
            };
            if schema_tx.send(Ok(stream.schema())).is_err() {
                return Ok(());
            }
            loop {
                let batch = tokio::select! {
                    biased;
                    () = stopped.cancelled() => return Err(stopping()),
                    batch = stream.next() => batch,
                };
                let Some(batch) = batch else { return Ok(()) };
                if batch_tx.send(batch).await.is_err() {
                    return Ok(());
                }
            }
        }));
        let schema = match schema_rx.await {
            Ok(schema) => schema?,
            // The task ended without a word: stopped, or it panicked.
            Err(_) => return Err(task.join().await),
        };
        let batches = Batches {
            batches: ReceiverStream::new(batch_rx),
            task: Some(task),
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// The batches of a statement running on the query threads, ending with an error if its task
/// was stopped or panicked; dropping it aborts the task.
struct Batches {
    batches: ReceiverStream<Result<RecordBatch>>,
    task: Option<AbortOnDrop<Result<()>>>,
}

impl Stream for Batches {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.batches.poll_next_unpin(cx) {
            Poll::Ready(None) => match self.task.as_mut() {
                // The channel closed: the task has ended, finished, stopped or panicked.
                Some(task) => match Pin::new(&mut task.0).poll(cx) {
                    Poll::Ready(ended) => {
                        self.task = None;
                        Poll::Ready(ended.map_err(joined).and_then(|r| r).err().map(Err))
                    }
                    Poll::Pending => Poll::Pending,
                },
                None => Poll::Ready(None),
            },
            other => other,
        }
    }
}

/// A task aborted when its handle is dropped: a statement whose caller went away stops.
struct AbortOnDrop<T>(JoinHandle<T>);

impl AbortOnDrop<Result<()>> {
    /// The error of a task that ended without sending its result.
    async fn join(mut self) -> DataFusionError {
        match (&mut self.0).await {
            Err(e) => joined(e),
            Ok(Err(e)) => e,
            Ok(Ok(())) => DataFusionError::Execution("the query ended without a result".into()),
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The error of a statement cancelled by [`QueryRuntime::stop`].
fn stopping() -> DataFusionError {
    DataFusionError::Execution("cancelled: the server is shutting down".into())
}

/// A query task that panicked or was cancelled, as an error.
fn joined(e: tokio::task::JoinError) -> DataFusionError {
    match e.try_into_panic() {
        Ok(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(%message, "a query panicked");
            DataFusionError::Execution(format!("internal error: the query panicked: {message}"))
        }
        Err(_) => DataFusionError::Execution("the query was cancelled".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    fn boom<T>() -> Result<T> {
        panic!("boom")
    }

    #[tokio::test]
    async fn statements_run_and_panics_are_errors() {
        let queries = QueryRuntime::try_new(1).unwrap();
        let ctx = SessionContext::new();
        let batches = queries
            .run(async move { ctx.sql("SELECT 40 + 2 AS n").await?.collect().await })
            .await
            .unwrap();
        assert_eq!(batches[0].num_rows(), 1);
        let err = queries.run(async { boom::<()>() }).await.unwrap_err();
        assert!(
            err.to_string().contains("the query panicked: boom"),
            "{err}"
        );
        let err = queries.execute(async { boom() }).await.err().unwrap();
        assert!(
            err.to_string().contains("the query panicked: boom"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn stop_cancels_running_and_later_statements() {
        let queries = QueryRuntime::try_new(1).unwrap();
        let ctx = SessionContext::new();
        let endless = "SELECT * FROM generate_series(1, 9223372036854775806)";
        let mut stream = queries
            .execute(async move { ctx.sql(endless).await?.execute_stream().await })
            .await
            .unwrap();
        assert!(stream.next().await.unwrap().is_ok());
        queries.stop();
        let last = loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                other => break other,
            }
        };
        let err = last.expect("an error, not a silent end").unwrap_err();
        assert!(err.to_string().contains("shutting down"), "{err}");
        let err = queries.run(async { Ok(()) }).await.unwrap_err();
        assert!(err.to_string().contains("shutting down"), "{err}");
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_query() {
        let queries = QueryRuntime::try_new(1).unwrap();
        let ctx = SessionContext::new();
        // An endless stream: it only ends by being aborted.
        let stream = queries
            .execute(async move {
                let df = ctx.sql("SELECT * FROM generate_series(1, 9223372036854775806)");
                df.await?.execute_stream().await
            })
            .await
            .unwrap();
        assert!(queries.active_tasks() >= 1);
        drop(stream);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while queries.active_tasks() > 0 {
            assert!(std::time::Instant::now() < deadline, "the query still runs");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
