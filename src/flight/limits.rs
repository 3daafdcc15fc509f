//! What one statement, one user and one connection may take of the server.
//!
//! - [`StatementSlots`]: statements running at once, over all users and per user, and how long
//!   each call of a statement may run. A call over a cap is refused at once with
//!   `RESOURCE_EXHAUSTED` (a BI tool retries; queueing would hide the overload), one over its
//!   time ends with `DEADLINE_EXCEEDED` and its statement is stopped.
//! - [`ExportBudget`]: exports each user may START upstream per period ([`ExportRate`]), the
//!   [`ExportGate`] of their statements and refreshes. An export hits the FHIR server (the
//!   EHR) for minutes; one client kicking off dozens would load it for everyone. Reading fresh
//!   snapshots or joining an export already running costs nothing; over the budget the
//!   statement is refused with `RESOURCE_EXHAUSTED`, saying when the next export may start.
//! - [`incoming`]: the accepted connections, at most so many at once, each closed when its
//!   client sends nothing for the idle timeout. A live client always sends: the server pings
//!   it several times per idle timeout and HTTP/2 clients answer, so only connections that never
//!   spoke (or stopped answering) are closed, and idle sockets cannot exhaust the server's file
//!   descriptors.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::auth::Caller;
use crate::catalog::ExportGate;
use crate::{Error, Result};

/// How often the server pings a connection at most (HTTP/2 PING; more often when the idle
/// timeout is short, see [`Limits::keepalive_interval`]); a client that does not answer within
/// [`KEEPALIVE_TIMEOUT`] is dropped.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_INTERVAL`].
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The limits of a Flight SQL server; see [`FlightSqlServer`](super::FlightSqlServer)'s
/// `with_*` setters for their meaning and defaults.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_statements: usize,
    pub(crate) max_statements_per_user: usize,
    pub(crate) query_timeout: Option<Duration>,
    pub(crate) max_connections: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) exports_per_user: ExportRate,
}

impl Default for Limits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            max_statements: 8 * cores,
            max_statements_per_user: 2 * cores,
            query_timeout: None,
            max_connections: 512,
            idle_timeout: Duration::from_secs(120),
            exports_per_user: ExportRate::default(),
        }
    }
}

impl Limits {
    /// The server's ping interval: four pings per idle timeout at least, so a live client
    /// always answers in time.
    pub(crate) fn keepalive_interval(&self) -> Duration {
        KEEPALIVE_INTERVAL.min(self.idle_timeout / 4)
    }
}

/// The statements running, against [`Limits::max_statements`] and
/// [`Limits::max_statements_per_user`].
#[derive(Debug)]
pub(crate) struct StatementSlots {
    all: Arc<Semaphore>,
    /// One semaphore per user who ran a statement (authenticated names only, so bounded by the
    /// users file; anonymous callers share one).
    users: Mutex<HashMap<String, Arc<Semaphore>>>,
    limits: Limits,
}

/// A running statement's place: held while its call runs (GetFlightInfo) or its results
/// stream (DoGet).
#[derive(Debug)]
pub(crate) struct Slot {
    _all: OwnedSemaphorePermit,
    _user: OwnedSemaphorePermit,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
}

impl StatementSlots {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            all: Arc::new(Semaphore::new(limits.max_statements)),
            users: Mutex::default(),
            limits,
        }
    }

    /// Statements holding a slot now.
    pub(crate) fn running(&self) -> usize {
        self.limits.max_statements - self.all.available_permits()
    }

    /// A slot for a statement of `caller`, or `RESOURCE_EXHAUSTED` when a cap is reached.
    pub(crate) fn take(&self, caller: Option<&Caller>) -> Result<Slot, Status> {
        let limits = &self.limits;
        let all = Arc::clone(&self.all).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the server is running its limit of {} statements; try again later",
                limits.max_statements
            ))
        })?;
        let name = caller.map_or("", Caller::name);
        let user = {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            let per_user = limits.max_statements_per_user;
            Arc::clone(
                users
                    .entry(name.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(per_user))),
            )
        };
        let user = user.try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "you are running your limit of {} statements at once; wait for one to finish",
                limits.max_statements_per_user
            ))
        })?;
        Ok(Slot {
            _all: all,
            _user: user,
            deadline: limits.query_timeout.map(|t| Instant::now() + t),
            timeout: limits.query_timeout,
        })
    }
}

impl Slot {
    fn deadline_exceeded(&self) -> Status {
        let timeout = self.timeout.unwrap_or_default();
        Status::deadline_exceeded(format!(
            "the statement ran longer than the server's query timeout ({} s) and was stopped",
            timeout.as_secs_f64()
        ))
    }

    /// Runs `call` within the slot's deadline; past it, `call` is dropped (which stops its
    /// statement) and the result is `DEADLINE_EXCEEDED`.
    pub(crate) async fn bound<T>(
        &self,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, call)
                .await
                .map_err(|_| self.deadline_exceeded())?,
            None => call.await,
        }
    }

    /// `stream`, holding the slot until it ends or is dropped, and ending with
    /// `DEADLINE_EXCEEDED` at the deadline (dropping `stream`, which stops its statement).
    pub(crate) fn hold<T: Send + 'static>(
        self,
        stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    ) -> impl Stream<Item = Result<T, Status>> + Send + 'static {
        let expired = self.deadline_exceeded();
        let deadline = self.deadline;
        let timer = async move {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let stopped = stream.take_until(timer);
        let slot = self;
        // After the stream: an error if the deadline cut it short; the slot is released when
        // this stream is dropped.
        let tail = futures::stream::once(async move {
            let over = slot.deadline.is_some_and(|d| Instant::now() >= d);
            drop(slot);
            over.then_some(Err(expired))
        })
        .filter_map(std::future::ready);
        stopped.chain(tail)
    }
}

/// How many exports one user may start upstream within a sliding period: `10/15m` (the
/// default), `4/1m`, `1/30s`. Parsed from and shown as that text (`serve --exports-per-user`).
///
/// The default lets a session open a dozen new tables at once (a BI tool showing several
/// tables starts an export for each) while keeping one client from kicking off more than 40
/// exports an hour against the EHR; statements on fresh snapshots are not counted.
///
/// ```
/// use std::time::Duration;
/// use fhirflight::flight::ExportRate;
///
/// let rate: ExportRate = "4/1m".parse().unwrap();
/// assert_eq!(rate, ExportRate::new(4, Duration::from_secs(60)));
/// assert_eq!(rate.to_string(), "4/1m");
/// assert_eq!(ExportRate::default().to_string(), "10/15m");
/// assert!("0/1m".parse::<ExportRate>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportRate {
    exports: usize,
    period: Duration,
}

impl ExportRate {
    /// `exports` (at least 1) per `period` (at least 1 ms).
    pub fn new(exports: usize, period: Duration) -> Self {
        Self {
            exports: exports.max(1),
            period: period.max(Duration::from_millis(1)),
        }
    }
}

impl Default for ExportRate {
    fn default() -> Self {
        Self::new(10, Duration::from_secs(15 * 60))
    }
}

impl std::str::FromStr for ExportRate {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = || {
            Error::config(format!(
                "export rate {}: expected EXPORTS/PERIOD with EXPORTS >= 1, like 10/15m or 4/1m",
                crate::error::quoted(text)
            ))
        };
        let (exports, period) = text.split_once('/').ok_or_else(invalid)?;
        let exports: usize = exports.trim().parse().map_err(|_| invalid())?;
        let period = crate::time::parse_duration(period).ok_or_else(invalid)?;
        if exports == 0 || period.is_zero() {
            return Err(invalid());
        }
        Ok(Self::new(exports, period))
    }
}

impl fmt::Display for ExportRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.exports, Period(self.period))
    }
}

/// A duration as `--exports-per-user` takes it: `15m`, `2h`, `30s`, `1500ms`.
struct Period(Duration);

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

/// The exports each user started within the last period, against an [`ExportRate`].
#[derive(Debug)]
pub(crate) struct ExportBudget {
    rate: ExportRate,
    /// When each user's recent exports started, oldest first (authenticated names only, so
    /// bounded by the users file; anonymous callers share one).
    started: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl ExportBudget {
    pub(crate) fn new(rate: ExportRate) -> Self {
        Self {
            rate,
            started: Mutex::default(),
        }
    }

    /// The gate of `caller`'s statements: it spends this budget.
    pub(crate) fn gate(self: &Arc<Self>, caller: Option<&Caller>) -> Arc<dyn ExportGate> {
        Arc::new(UserExports {
            budget: Arc::clone(self),
            user: caller.map_or("", Caller::name).to_owned(),
        })
    }

    /// Counts `exports` starting at `now` for `user` if they have started fewer than the rate's
    /// within its period; else says when the next may start.
    fn admit(&self, user: &str, exports: usize, now: Instant) -> Result<()> {
        let ExportRate {
            exports: max,
            period,
        } = self.rate;
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        let recent = started.entry(user.to_owned()).or_default();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= period)
        {
            recent.pop_front();
        }
        if recent.len() < max {
            recent.extend(std::iter::repeat_n(now, exports));
            return Ok(());
        }
        // The next may start once all but `max - 1` of the recent ones are older than the period.
        let freed = recent[recent.len() - max] + period;
        let wait = freed.duration_since(now).as_secs() + 1;
        Err(Error::ResourceExhausted {
            message: format!(
                "you started {} exports upstream within {} (this server's limit is {} per user): \
                 the next may start in {wait} s; statements on fresh snapshots run meanwhile",
                recent.len(),
                Period(period),
                self.rate,
            ),
        })
    }
}

/// The [`ExportGate`] of one user's statements.
#[derive(Debug)]
struct UserExports {
    budget: Arc<ExportBudget>,
    user: String,
}

impl ExportGate for UserExports {
    fn admit(&self, exports: usize) -> Result<()> {
        self.budget.admit(&self.user, exports, Instant::now())
    }
}

/// The connections accepted on `listener`: at most `limits.max_connections` open at once (one
/// more is closed at once, with a warning), each closed after `limits.idle_timeout` without a
/// byte from its client. Accept errors (out of file descriptors) are logged and retried after
/// a pause, never end the server.
pub(crate) fn incoming(
    listener: TcpListener,
    limits: &Limits,
) -> impl Stream<Item = Result<LimitedConnection, io::Error>> + Send + use<> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let (max, idle) = (limits.max_connections, limits.idle_timeout);
    futures::stream::unfold(listener, move |listener| {
        let open = Arc::clone(&open);
        async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("accepting a connection failed: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
                    tracing::warn!(%peer, "connection refused: {max} connections are open");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let connection = LimitedConnection {
                    stream,
                    idle,
                    timer: Box::pin(tokio::time::sleep(idle)),
                    _permit: permit,
                };
                return Some((Ok(connection), listener));
            }
        }
    })
}

/// An accepted connection that holds its place among the open ones and fails its reads once
/// the client has been silent for the idle timeout.
#[derive(Debug)]
pub(crate) struct LimitedConnection {
    stream: TcpStream,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.timer.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing for the idle timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for LimitedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(all: usize, per_user: usize) -> Limits {
        Limits {
            max_statements: all,
            max_statements_per_user: per_user,
            ..Limits::default()
        }
    }

    #[test]
    fn caps_count_all_statements_and_each_users() {
        let slots = StatementSlots::new(limits(3, 2));
        let user = |name: &str| Caller::User {
            name: name.into(),
            role: crate::flight::Role::Read,
        };
        let (alice, bob) = (user("alice"), user("bob"));
        let a1 = slots.take(Some(&alice)).unwrap();
        let _a2 = slots.take(Some(&alice)).unwrap();
        let refused = slots.take(Some(&alice)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("limit of 2"), "{refused:?}");
        let _b1 = slots.take(Some(&bob)).unwrap();
        let full = slots.take(Some(&bob)).unwrap_err();
        assert!(full.message().contains("limit of 3"), "{full:?}");
        drop(a1);
        assert!(
            slots.take(Some(&bob)).is_ok(),
            "a finished statement frees its slot"
        );
    }

    #[test]
    fn exports_are_counted_per_user_within_the_period() {
        let budget = ExportBudget::new(ExportRate::new(2, Duration::from_secs(60)));
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        budget.admit("alice", 1, at(0)).unwrap();
        budget.admit("alice", 1, at(0)).unwrap();
        let refused = budget.admit("alice", 1, at(0)).unwrap_err();
        assert!(
            matches!(refused, Error::ResourceExhausted { .. }),
            "{refused:?}"
        );
        assert_eq!(
            refused.to_string(),
            "you started 2 exports upstream within 1m (this server's limit is 2/1m per user): \
             the next may start in 61 s; statements on fresh snapshots run meanwhile"
        );
        budget.admit("bob", 2, at(0)).unwrap();
        let later = budget.admit("alice", 1, at(30)).unwrap_err().to_string();
        assert!(later.contains("the next may start in 31 s"), "{later}");
        budget.admit("alice", 2, at(60)).unwrap();
    }

    #[tokio::test]
    async fn a_call_past_the_timeout_is_stopped() {
        let slots = StatementSlots::new(Limits {
            query_timeout: Some(Duration::from_millis(100)),
            ..Limits::default()
        });
        let slot = slots.take(None).unwrap();
        let never = slot.bound(std::future::pending::<Result<(), Status>>());
        let status = never.await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("(0.1 s)"), "{status:?}");

        let slot = slots.take(None).unwrap();
        let endless = futures::stream::repeat_with(|| Ok::<_, Status>(1)).then(|x| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            x
        });
        let items: Vec<Result<i32, Status>> = slot.hold(endless).collect().await;
        let (last, first) = items.split_last().unwrap();
        assert!(
            !first.is_empty() && first.iter().all(Result::is_ok),
            "{items:?}"
        );
        assert_eq!(
            last.as_ref().unwrap_err().code(),
            tonic::Code::DeadlineExceeded
        );

        let slot = slots.take(None).unwrap();
        let short: Vec<_> = slot
            .hold(futures::stream::iter([Ok::<_, Status>(1)]))
            .collect()
            .await;
        assert_eq!(
            short.len(),
            1,
            "a stream within its time ends without an error"
        );
    }
}
