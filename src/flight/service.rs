//! The Flight SQL service: statements, prepared statements, metadata, handshake, actions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{
    GetCatalogsBuilder, GetTablesBuilder, SqlInfoData, XdbcTypeInfoData,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetCrossReference,
    CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::TableReference;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::TableType;
use datafusion::prelude::SessionContext;
use futures::{Stream, TryFutureExt, TryStreamExt, stream};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::actions::{CustomAction, ExportControl};
use super::audit::{self, AuditLog, AuditRecord, StreamTally};
use super::auth::{Authenticator, Caller};
use super::limits::{ExportBudget, Limits, StatementSlots};
use super::metadata;
use super::metrics::{Metrics, Scrape};
use super::proto::StatementHandle;
use super::statement::{parameter_schema, plan_sql};
use super::status::status;
use super::users::Role;
use crate::Error;
use crate::catalog::{self, Freshness, QueryRuntime};

type DoGetStream = <FhirFlightService as FlightService>::DoGetStream;

/// The table types GetTableTypes lists, as JDBC names them.
const TABLE_TYPES: [&str; 3] = ["LOCAL TEMPORARY", "TABLE", "VIEW"];

/// Serves a DataFusion session over Flight SQL; every call has been authenticated by
/// [`super::auth::AuthLayer`] before it arrives here.
#[derive(Clone)]
pub(crate) struct FhirFlightService {
    ctx: SessionContext,
    /// The session as read users see it: the same catalogs, with the SQL functions that change
    /// them refusing ([`readers_context`]).
    readers: SessionContext,
    /// Where statements are planned and run, apart from the RPCs' own runtime.
    queries: QueryRuntime,
    auth: Arc<Authenticator>,
    exports: Option<Arc<dyn ExportControl>>,
    slots: Arc<StatementSlots>,
    /// The exports each user may start (the gate of their statements and refreshes).
    budget: Arc<ExportBudget>,
    audit: Option<AuditLog>,
    metrics: Arc<Metrics>,
    sql_info: Arc<SqlInfoData>,
    xdbc_type_info: Arc<XdbcTypeInfoData>,
}

impl std::fmt::Debug for FhirFlightService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirFlightService")
            .field("session_id", &self.ctx.session_id())
            .field("auth", &self.auth)
            .field("exports", &self.exports)
            .finish_non_exhaustive()
    }
}

impl FhirFlightService {
    pub(crate) fn new(
        ctx: SessionContext,
        queries: QueryRuntime,
        auth: Arc<Authenticator>,
        exports: Option<Arc<dyn ExportControl>>,
        limits: &Limits,
        audit: Option<AuditLog>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let sql_info = Arc::new(metadata::sql_info(&ctx));
        Self {
            readers: readers_context(&ctx),
            ctx,
            queries,
            auth,
            exports,
            slots: Arc::new(StatementSlots::new(limits.clone())),
            budget: Arc::new(ExportBudget::new(limits.exports_per_user)),
            audit,
            metrics,
            sql_info,
            xdbc_type_info: Arc::new(metadata::xdbc_type_info()),
        }
    }

    /// What the metrics listener reads of this service.
    pub(crate) fn scrape(&self) -> Scrape {
        Scrape {
            metrics: Arc::clone(&self.metrics),
            slots: Arc::clone(&self.slots),
            exports: self.exports.clone(),
            memory: Arc::clone(&self.ctx.runtime_env().memory_pool),
        }
    }

    /// `call` with `caller`'s export budget as the gate of the exports it would start.
    fn gated<F: Future>(
        &self,
        caller: Option<&Caller>,
        call: F,
    ) -> impl Future<Output = F::Output> + use<F> {
        // Boxed: a statement's planning future is large, and it is moved between tasks.
        Box::pin(catalog::with_export_gate(self.budget.gate(caller), call))
    }

    /// Counts a statement that failed before any DoGet streamed it.
    fn failed<T>(&self, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.metrics.statement_ended(status.code());
        }
        result
    }

    /// Plans a statement to prepare (CreatePreparedStatement) and returns its handle and
    /// schemas.
    async fn prepare(
        &self,
        query: ActionCreatePreparedStatementRequest,
        caller: Option<&Caller>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let slot = self.slots.take(caller)?;
        // Only the schemas are needed: missing tables are exported, present ones are not
        // refreshed here (GetFlightInfo applies the catalog's freshness, once).
        let (ctx, sql) = (self.context(caller).clone(), query.query.clone());
        let planning = self.queries.run(self.gated(caller, async move {
            let df = plan_sql(&ctx, &sql, Some(Freshness::Never)).await?;
            let parameters = parameter_schema(df.logical_plan())?;
            Ok((df.schema().as_arrow().clone(), parameters))
        }));
        let (dataset, parameters) = slot.bound(planning.map_err(status)).await?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: StatementHandle::new(query.query).encode_to_vec().into(),
            dataset_schema: ipc_schema(&dataset)?,
            parameter_schema: ipc_schema(&parameters)?,
        })
    }

    /// The session a statement of `caller` runs in: by role.
    fn context(&self, caller: Option<&Caller>) -> &SessionContext {
        match caller.map(Caller::role) {
            Some(Role::Admin) => &self.ctx,
            Some(Role::Read) | None => &self.readers,
        }
    }

    /// The FlightInfo of a statement: planned here (so bad SQL fails now, not at DoGet), run by
    /// DoGet with the handle itself as the ticket.
    async fn statement_info(
        &self,
        handle: StatementHandle,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let started = Instant::now();
        let caller = request.extensions().get::<Caller>();
        // Audit work (the statement's text, its tables) only when there is an audit log.
        let record = self.audit.as_ref().map(|_| {
            AuditRecord::new("GetFlightInfo", caller, request.remote_addr())
                .with_statement(handle.sql.clone())
        });
        let audited = record.is_some();
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode_to_vec().into(),
        };
        let planned = async {
            let slot = self.slots.take(caller)?;
            let ctx = self.context(caller).clone();
            let planning = self.queries.run(self.gated(caller, async move {
                let df = handle.plan(&ctx, None).await?;
                let tables = match audited {
                    true => audit::tables(df.logical_plan(), &ctx),
                    false => Vec::new(),
                };
                Ok((df.schema().as_arrow().clone(), tables))
            }));
            slot.bound(planning.map_err(status)).await
        }
        .await;
        let planned = self.failed(planned);
        if let (Some(log), Some(record)) = (&self.audit, record) {
            let tables = planned.as_ref().map(|(_, t)| t.clone()).unwrap_or_default();
            let record = record.with_tables(tables).with_outcome(&planned);
            log.record(&record.ended(started));
        }
        let (schema, _) = planned?;
        flight_info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    /// Runs a statement handle or ticket on the query runtime, streaming; the statement holds a
    /// slot until its results end.
    async fn run(
        &self,
        handle: &[u8],
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let started = Instant::now();
        let caller = request.extensions().get::<Caller>();
        let handle = StatementHandle::decode_handle(handle).map_err(status)?;
        let record = self.audit.as_ref().map(|_| {
            AuditRecord::new("DoGet", caller, request.remote_addr())
                .with_statement(handle.sql.clone())
        });
        let audited = record.is_some();
        let scanned = Arc::new(std::sync::Mutex::new(Vec::new()));
        let started_stream = async {
            let slot = self.slots.take(caller)?;
            let ctx = self.context(caller).clone();
            let tables = Arc::clone(&scanned);
            let execution = self.queries.execute(self.gated(caller, async move {
                let df = handle.plan_run(&ctx).await?;
                if audited {
                    *tables.lock().unwrap_or_else(|e| e.into_inner()) =
                        audit::tables(df.logical_plan(), &ctx);
                }
                df.execute_stream().await
            }));
            let stream = slot.bound(execution.map_err(status)).await?;
            Ok::<_, Status>((slot, stream))
        }
        .await;
        let started_stream = self.failed(started_stream);
        let tables = std::mem::take(&mut *scanned.lock().unwrap_or_else(|e| e.into_inner()));
        let record = record.map(|r| r.with_tables(tables));
        let (slot, stream) = match started_stream {
            Ok(started) => started,
            Err(refused) => {
                if let (Some(log), Some(record)) = (&self.audit, record) {
                    let failed: Result<(), _> = Err(refused.clone());
                    log.record(&record.with_outcome(&failed).ended(started));
                }
                return Err(refused);
            }
        };
        let audit = self.audit.clone().zip(record);
        let tally = StreamTally::new(Arc::clone(&self.metrics), audit, started);
        let stream = audit::counting_rows(stream, &tally);
        let response = Box::pin(slot.hold(record_batches(stream)));
        Ok(Response::new(Box::pin(audit::tallied(response, tally))))
    }

    /// The tables matching a GetTables request, with their schemas when asked for.
    async fn tables(&self, query: CommandGetTables) -> Result<RecordBatch, Status> {
        let include_schema = query.include_schema;
        // First the listing, filtered and sorted by arrow-flight's builder (SQL LIKE patterns),
        // then schemas only for the tables that made it through.
        let mut listing = CommandGetTables {
            include_schema: false,
            ..query
        }
        .into_builder();
        let empty = Schema::empty();
        // FHIR catalogs list the types their servers declare, asked once.
        crate::catalog::declare_types(self.ctx.state().catalog_list().as_ref()).await;
        for catalog_name in self.ctx.catalog_names() {
            let Some(catalog) = self.ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table in schema.table_names() {
                    // A catalog with export control lists tables without loading them (the
                    // default `table_type` would).
                    let table_type = match &self.exports {
                        Some(_) => TableType::Base,
                        None => schema
                            .table_type(&table)
                            .await
                            .map_err(status)?
                            .unwrap_or(TableType::Base),
                    };
                    listing
                        .append(
                            &catalog_name,
                            &schema_name,
                            &table,
                            table_type_name(table_type),
                            &empty,
                        )
                        .map_err(status)?;
                }
            }
        }
        let listing = listing.build().map_err(status)?;
        if !include_schema {
            return Ok(listing);
        }
        let column = |i: usize| listing.column(i).as_string::<i32>();
        let (catalogs, schemas, tables, types) = (column(0), column(1), column(2), column(3));
        let mut builder = GetTablesBuilder::new(
            None::<String>,
            None::<String>,
            None::<String>,
            Vec::<String>::new(),
            true,
        );
        for row in 0..listing.num_rows() {
            let reference =
                TableReference::full(catalogs.value(row), schemas.value(row), tables.value(row));
            let schema = self.table_schema(&reference).await?;
            builder
                .append(
                    catalogs.value(row),
                    schemas.value(row),
                    tables.value(row),
                    types.value(row),
                    &schema,
                )
                .map_err(status)?;
        }
        builder.build().map_err(status)
    }

    /// A table's schema for browsing: from the export control when there is one (never starts
    /// an export; empty when not known yet), else from the table itself.
    async fn table_schema(&self, table: &TableReference) -> Result<SchemaRef, Status> {
        if let Some(exports) = &self.exports {
            let schema = exports.browse_schema(table).await.map_err(status)?;
            return Ok(schema.unwrap_or_else(|| Arc::new(Schema::empty())));
        }
        let provider = self
            .ctx
            .table_provider(table.clone())
            .await
            .map_err(status)?;
        Ok(provider.schema())
    }

    fn db_schemas(&self, query: CommandGetDbSchemas) -> Result<RecordBatch, Status> {
        let mut builder = query.into_builder();
        for catalog_name in self.ctx.catalog_names() {
            if let Some(catalog) = self.ctx.catalog(&catalog_name) {
                for schema_name in catalog.schema_names() {
                    builder.append(&catalog_name, schema_name);
                }
            }
        }
        builder.build().map_err(status)
    }
}

/// `ctx` for read users: the same state (catalogs, tables, views are shared), with each of
/// [`ADMIN_FUNCTIONS`] replaced by one that refuses with `PERMISSION_DENIED`.
fn readers_context(ctx: &SessionContext) -> SessionContext {
    let readers = SessionContext::new_with_state(ctx.state());
    for name in ADMIN_FUNCTIONS {
        readers.register_udtf(name, Arc::new(AdminOnly(name)));
    }
    readers
}

/// The table functions that change the server's tables or start exports: admins only.
const ADMIN_FUNCTIONS: [&str; 2] = [catalog::REFRESH_FUNCTION, catalog::ADD_VIEW_FUNCTION];

/// A table function a read user may not call.
#[derive(Debug)]
struct AdminOnly(&'static str);

impl TableFunctionImpl for AdminOnly {
    fn call_with_args(
        &self,
        _args: TableFunctionArgs,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let denied = Error::permission_denied(format!("{} needs the admin role", self.0));
        Err(DataFusionError::External(Box::new(denied)))
    }
}

fn table_type_name(table_type: TableType) -> &'static str {
    match table_type {
        TableType::Base => "TABLE",
        TableType::View => "VIEW",
        TableType::Temporary => "LOCAL TEMPORARY",
    }
}

/// A FlightInfo with one endpoint holding `ticket`, served by this server.
fn flight_info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(status)?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// The FlightInfo of a metadata command: the command itself is the ticket.
fn metadata_info(
    command: &impl ProstMessageExt,
    schema: &Schema,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    flight_info(
        schema,
        command.as_any().encode_to_vec(),
        request.into_inner(),
    )
}

/// Streams `stream` as Flight data: each batch is sent as DataFusion produces it, and dropping
/// the response (a client that disconnects or cancels) drops the query.
fn record_batches(stream: SendableRecordBatchStream) -> DoGetStream {
    let schema = stream.schema();
    let batches = stream.map_err(|e| FlightError::Tonic(Box::new(status(e))));
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(|e| match e {
            FlightError::Tonic(s) => *s,
            other => status(other),
        });
    Box::pin(data)
}

/// A one-batch response for metadata.
fn one_batch(batch: Result<RecordBatch, Status>) -> Result<Response<DoGetStream>, Status> {
    let batch = batch?;
    let data = FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(stream::iter([Ok(batch)]))
        .map_err(status);
    Ok(Response::new(Box::pin(data)))
}

fn ipc_schema(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(status)?;
    Ok(bytes)
}

#[tonic::async_trait]
impl FlightSqlService for FhirFlightService {
    type FlightService = Self;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let caller = request.extensions().get::<Caller>();
        let token = match caller {
            Some(Caller::User { name, role }) => self.auth.token(name, *role).map_err(status)?,
            Some(Caller::Anonymous) => String::new(),
            None => {
                return Err(Status::internal(
                    "handshake reached the service without authentication",
                ));
            }
        };
        if let Some(log) = &self.audit {
            let record = AuditRecord::new("Handshake", caller, request.remote_addr());
            log.record(&record.ended(Instant::now()));
        }
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(stream::iter([Ok(response)])));
        if !token.is_empty() {
            let header = format!("Bearer {token}").parse().map_err(status)?;
            response.metadata_mut().insert("authorization", header);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.statement_info(StatementHandle::new(query.query), request)
            .await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle =
            StatementHandle::decode_handle(&query.prepared_statement_handle).map_err(status)?;
        self.statement_info(handle, request).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.run(&ticket.statement_handle, request).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.run(&query.prepared_statement_handle, request).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let started = Instant::now();
        let caller = request.extensions().get::<Caller>();
        let record = self.audit.as_ref().map(|_| {
            AuditRecord::new("CreatePreparedStatement", caller, request.remote_addr())
                .with_statement(query.query.clone())
        });
        let prepared = self.failed(self.prepare(query, caller).await);
        if let (Some(log), Some(record)) = (&self.audit, record) {
            log.record(&record.with_outcome(&prepared).ended(started));
        }
        prepared
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle =
            StatementHandle::decode_handle(&query.prepared_statement_handle).map_err(status)?;
        let data = request.into_inner().map_err(FlightError::from);
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(status)?;
        let parameters = match batches.first() {
            Some(first) => {
                Some(arrow::compute::concat_batches(&first.schema(), &batches).map_err(status)?)
            }
            None => None,
        };
        let bound = handle.bind(parameters).map_err(status)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(bound.encode_to_vec().into()),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Nothing to free: the handle is the whole statement. Still refuse foreign handles.
        StatementHandle::decode_handle(&query.prepared_statement_handle).map_err(status)?;
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, &GetCatalogsBuilder::new().schema(), request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let mut names = self.ctx.catalog_names();
        names.sort();
        names.into_iter().for_each(|name| builder.append(name));
        one_batch(builder.build().map_err(status))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        one_batch(self.db_schemas(query))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        one_batch(self.tables(query).await)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        TABLE_TYPES.into_iter().for_each(|t| builder.append(t));
        one_batch(builder.build().map_err(status))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        one_batch(query.into_builder(&self.sql_info).build().map_err(status))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc_type_info).schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        one_batch(
            query
                .into_builder(&self.xdbc_type_info)
                .build()
                .map_err(status),
        )
    }

    // FHIR tables have no declared keys: the key listings are empty, with the spec's schemas.

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, &metadata::primary_keys_schema(), request)
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        one_batch(Ok(RecordBatch::new_empty(metadata::primary_keys_schema())))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, &metadata::foreign_keys_schema(), request)
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        one_batch(Ok(RecordBatch::new_empty(metadata::foreign_keys_schema())))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, &metadata::foreign_keys_schema(), request)
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        one_batch(Ok(RecordBatch::new_empty(metadata::foreign_keys_schema())))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, &metadata::foreign_keys_schema(), request)
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        one_batch(Ok(RecordBatch::new_empty(metadata::foreign_keys_schema())))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        self.exports
            .as_ref()
            .map(|_| CustomAction::types().into_iter().map(Ok).collect())
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let started = Instant::now();
        let client = request.remote_addr();
        let caller = request.extensions().get::<Caller>().cloned();
        let caller = caller
            .ok_or_else(|| Status::internal("an action reached the service unauthenticated"))?;
        let action = request.into_inner();
        let Some(custom) = CustomAction::parse(&action.r#type) else {
            return Err(Status::invalid_argument(format!(
                "unknown action {:?}: ListActions lists the actions",
                action.r#type
            )));
        };
        let Some(exports) = &self.exports else {
            return Err(Status::unimplemented(format!(
                "{:?} needs a FHIR catalog; this server has no export control",
                action.r#type
            )));
        };
        let ran = self
            .gated(
                Some(&caller),
                custom.run(exports.as_ref(), &caller, &action.body),
            )
            .await
            .map_err(status);
        if let Some(log) = &self.audit {
            let record = AuditRecord::new(custom.name(), Some(&caller), client);
            log.record(&record.with_outcome(&ran).ended(started));
        }
        let body = ran?;
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(stream::iter([Ok(result)]))))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
