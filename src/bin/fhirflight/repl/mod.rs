//! `fhirflight sql` over several statements: the QUERY argument, `-c`, `-f` files, standard
//! input, or the interactive shell on a terminal. One session for the whole run, so views added
//! by a statement, the demo server and the exports it started live across statements; each
//! result goes through the same [`Output`] writers as a single query's.

mod complete;
mod meta;
mod statements;

use std::path::PathBuf;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use fhirflight::catalog::{self, ExportState, FhirCatalog, Freshness, QueryRuntime};
use fhirflight::config::Session;
use fhirflight::{Error, Result};
use futures::StreamExt as _;
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use tokio::io::AsyncBufReadExt as _;

use self::complete::Names;
use self::meta::{Meta, NAMES_QUERY};
use self::statements::{Entry, StatementReader};
use crate::args::Script;
use crate::output::Output;
use crate::progress::ExportsReport;
use crate::signal::{catch_ctrl_c, stop_snapshot_writes};

/// Where the statements come from.
pub(crate) enum Input {
    /// Texts read whole before the session: the QUERY argument, each `-c`, each `-f` file.
    Texts(Vec<Text>),
    /// Standard input that is no terminal (a pipe, a file): read and run as it comes.
    Stdin,
    /// The interactive shell.
    Terminal,
}

/// One input text, split.
pub(crate) struct Text {
    /// What errors call it: `-c #2`, a file's path.
    name: String,
    entries: Vec<Entry>,
}

impl Input {
    /// The input of `sql`'s arguments: `query`, else the `scripts` (`-c` and `-f`, in the order
    /// given), else standard input. With an `--output` file it must be one statement, whose
    /// result the file holds.
    pub(crate) fn new(query: Option<String>, scripts: &[Script], to_file: bool) -> Result<Self> {
        use std::io::IsTerminal as _;
        let split = |name: String, text: &str| {
            let mut reader = StatementReader::new();
            let mut entries: Vec<Entry> = text.lines().flat_map(|l| reader.push_line(l)).collect();
            entries.extend(reader.finish());
            Text { name, entries }
        };
        let mut texts: Vec<Text> = query
            .map(|q| split("the query".into(), &q))
            .into_iter()
            .collect();
        let mut commands = 0;
        for script in scripts {
            texts.push(match script {
                Script::Command(command) => {
                    commands += 1;
                    split(format!("-c #{commands}"), command)
                }
                Script::File(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                    split(path.display().to_string(), &text)
                }
            });
        }
        if texts.is_empty() {
            if to_file {
                return Err(Error::config(
                    "--output holds the result of one statement: give it as QUERY, -c or -f",
                ));
            }
            return Ok(match std::io::stdin().is_terminal() {
                true => Input::Terminal,
                false => Input::Stdin,
            });
        }
        let statements = texts.iter().flat_map(|t| &t.entries).count();
        if to_file && statements != 1 {
            return Err(Error::config(format!(
                "--output holds the result of one statement; the input holds {statements} statements and meta commands"
            )));
        }
        Ok(Input::Texts(texts))
    }
}

/// What comes after an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// `\q`, or the reader of standard output left (`| head`): the rest is not wanted.
    Quit,
}

/// A session and how its results are written.
pub(crate) struct Shell {
    session: Session,
    queries: QueryRuntime,
    output: Output,
    freshness: Freshness,
    /// The interactive shell's history file.
    history: Option<PathBuf>,
}

impl Shell {
    pub(crate) fn new(
        session: Session,
        output: Output,
        freshness: Freshness,
        history: Option<PathBuf>,
    ) -> Result<Self> {
        Ok(Self {
            session,
            queries: QueryRuntime::try_default()?,
            output,
            freshness,
            history,
        })
    }

    /// Runs `input`. Not interactive, the first error stops the run (exit status 1, as psql's
    /// `ON_ERROR_STOP` and duckdb), after a line naming the statement; Ctrl-C stops it as it
    /// stops a single query (exit status 130, a running export kept for the next run).
    pub(crate) async fn run(&self, input: Input) -> Result<()> {
        let ran = match input {
            Input::Terminal => return self.interactive().await,
            Input::Texts(texts) => self.run_texts(&texts).await,
            Input::Stdin => self.run_stdin().await,
        };
        if let Err(Error::Cancelled) = ran {
            // A running export's job and downloads stay in the cache's staging folder, and the
            // next run resumes them; a conversion in progress is stopped and cleaned up.
            stop_snapshot_writes().await;
            eprintln!(
                "interrupted: a running export is kept (its job on the server, its downloads in the cache); the next run resumes it"
            );
        }
        ran
    }

    async fn run_texts(&self, texts: &[Text]) -> Result<()> {
        for text in texts {
            for entry in &text.entries {
                if self.run_or_name(&text.name, entry).await? == Flow::Quit {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Runs the statements of standard input as they are read.
    async fn run_stdin(&self) -> Result<()> {
        let failed = |e| Error::io("standard input", e);
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut reader = StatementReader::new();
        loop {
            // Ctrl-C while waiting for input stops the run as it does during a statement.
            let line = tokio::select! {
                line = lines.next_line() => line.map_err(failed)?,
                _ = tokio::signal::ctrl_c() => return Err(Error::Cancelled),
            };
            let Some(line) = line else { break };
            for entry in reader.push_line(&line) {
                if self.run_or_name("standard input", &entry).await? == Flow::Quit {
                    return Ok(());
                }
            }
        }
        match reader.finish() {
            Some(entry) => self.run_or_name("standard input", &entry).await.map(drop),
            None => Ok(()),
        }
    }

    /// Runs `entry` of the input `name`; a failure first names where it was.
    async fn run_or_name(&self, name: &str, entry: &Entry) -> Result<Flow> {
        let ran = self.run_entry(entry).await;
        if let Err(e) = &ran
            && !matches!(e, Error::Cancelled)
        {
            let (Entry::Sql { text, line } | Entry::Meta { text, line }) = entry;
            let first = text.lines().next().unwrap_or_default();
            let cut = match first.char_indices().nth(60) {
                Some((end, _)) => format!("{}…", &first[..end]),
                None if text.contains('\n') => format!("{first} …"),
                None => first.to_owned(),
            };
            eprintln!("stopped at {name}, line {line}: {cut}");
        }
        ran
    }

    async fn run_entry(&self, entry: &Entry) -> Result<Flow> {
        match entry {
            Entry::Sql { text, .. } => self.execute(text).await,
            Entry::Meta { text, .. } => self.meta(Meta::parse(text)?).await,
        }
    }

    fn ctx(&self) -> &SessionContext {
        self.session.context()
    }

    /// Runs one SQL statement and writes its result.
    async fn execute(&self, sql: &str) -> Result<Flow> {
        // Before the statement: an `--output` file that cannot be written costs no export.
        let destination = self.output.open()?;
        let report = ExportsReport::start(self.ctx().clone());
        let started = Instant::now();
        // Planned and run on query threads, whose stack holds the deepest statement accepted;
        // the batches are written here as they come. Ctrl-C drops the statement, which stops
        // it; an export it waited for runs on.
        let (ctx, sql, freshness) = (self.ctx().clone(), sql.to_owned(), self.freshness);
        let running = async {
            let mut stream = self
                .queries
                .execute(async move {
                    let df = catalog::sql_with_freshness(&ctx, &sql, freshness).await?;
                    df.execute_stream().await
                })
                .await?;
            // Planning ran the statement's exports: their lines end before the result is
            // written to the terminal they are drawn on.
            report.finish().await;
            if stream.schema().fields().is_empty() {
                // A statement without a result (SET, DDL): no table to draw; the footer says
                // it ran, as datafusion-cli's "0 row(s) fetched".
                while let Some(batch) = stream.next().await {
                    batch?;
                }
                return Ok(Some(0));
            }
            self.output.write(stream, destination).await
        };
        let written = tokio::select! {
            written = running => written,
            _ = tokio::signal::ctrl_c() => Err(Error::Cancelled),
        };
        // The progress display is gone before anything else is printed.
        report.finish().await;
        Ok(self.footer(written?, started))
    }

    /// Writes `batches` as a statement's result.
    async fn show(&self, schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Flow> {
        let started = Instant::now();
        let destination = self.output.open()?;
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        let stream = Box::pin(RecordBatchStreamAdapter::new(schema, stream));
        let written = self.output.write(stream, destination).await?;
        Ok(self.footer(written, started))
    }

    /// Prints the footer of a result of `rows` (`None`: standard output was closed).
    fn footer(&self, rows: Option<usize>, started: Instant) -> Flow {
        let Some(rows) = rows else {
            return Flow::Quit;
        };
        if let Some(footer) = self.output.footer(rows, started.elapsed()) {
            eprintln!("{footer}");
        }
        Flow::Continue
    }

    /// The result of a browsing statement (`information_schema`), which never exports.
    async fn browse(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let df = catalog::sql(self.ctx(), sql).await?;
        let schema = SchemaRef::from(df.schema().as_arrow().clone());
        Ok((schema, df.collect().await?))
    }

    /// The interactive shell: line editing, history, Tab completion; an error is printed and
    /// the shell goes on; Ctrl-C cancels the running statement.
    async fn interactive(&self) -> Result<()> {
        let failed = |e: ReadlineError| Error::io("the terminal", std::io::Error::other(e));
        let config = rustyline::Config::builder()
            .auto_add_history(true)
            .history_ignore_space(true)
            .build();
        let mut editor =
            rustyline::Editor::<Names, FileHistory>::with_config(config).map_err(failed)?;
        let names = Names::default();
        editor.set_helper(Some(names.clone()));
        if let Some(path) = &self.history {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            if path.exists() {
                editor.load_history(path).map_err(failed)?;
            }
        }
        eprintln!(
            "fhirflight shell: end statements with `;`; \\? lists the meta commands; Ctrl-D quits"
        );
        // Ctrl-C is caught from now on: in a meta command it does nothing rather than end the
        // shell (at the prompt the line editor reads it as a key, during a statement
        // `execute` does).
        catch_ctrl_c();
        let mut reader = StatementReader::new();
        let mut interrupted = false;
        'shell: loop {
            if !reader.is_pending() {
                // Views and snapshots the last statement added are completed too.
                match self.completion_names().await {
                    Ok(found) => names.set(found),
                    Err(e) => tracing::warn!("Tab completion: {e}"),
                }
            }
            let prompt = match reader.is_pending() {
                true => "       ...> ",
                false => "fhirflight> ",
            };
            let line = match tokio::task::block_in_place(|| editor.readline(prompt)) {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) if reader.is_pending() => {
                    reader.clear();
                    continue;
                }
                Err(ReadlineError::Interrupted) if !interrupted => {
                    eprintln!("(Ctrl-C again or Ctrl-D to quit)");
                    interrupted = true;
                    continue;
                }
                Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
                Err(e) => return Err(failed(e)),
            };
            interrupted = false;
            if let Some(path) = &self.history
                && let Err(e) = editor.append_history(path)
            {
                tracing::warn!("history file {}: {e}", path.display());
            }
            for entry in reader.push_line(&line) {
                match self.run_entry(&entry).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Quit) => break 'shell,
                    Err(Error::Cancelled) => {
                        eprintln!(
                            "cancelled; an export it waited for runs on and commits its snapshot (\\exports)"
                        );
                        // What else the line held was typed before the Ctrl-C.
                        break;
                    }
                    Err(e) => eprintln!("error: {e}"),
                }
            }
        }
        self.leave().await;
        Ok(())
    }

    /// Leaving the shell while exports run: they keep their jobs and downloads for the next run,
    /// as a `sql` interrupted with Ctrl-C does.
    async fn leave(&self) {
        let running = FhirCatalog::all_in(self.ctx()).iter().any(|(_, catalog)| {
            catalog
                .exports()
                .iter()
                .any(|e| e.state == ExportState::Running)
        });
        if running {
            stop_snapshot_writes().await;
            eprintln!(
                "a running export is kept (its job on the server, its downloads in the cache); the next run resumes it"
            );
        }
    }

    /// The tables and known columns Tab completes.
    async fn completion_names(&self) -> Result<Vec<String>> {
        use datafusion::arrow::array::AsArray as _;
        let (_, batches) = self.browse(NAMES_QUERY).await?;
        let mut names = Vec::new();
        for batch in &batches {
            let column = datafusion::arrow::compute::cast(
                batch.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )?;
            names.extend(
                column
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_owned),
            );
        }
        Ok(names)
    }
}

/// The history file when none is given: in the user's data folder (`~/.local/share` on Linux).
/// It holds statements, so patient ids: the line editor writes it readable by its owner only.
pub(crate) fn default_history() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("fhirflight").join("history"))
}
