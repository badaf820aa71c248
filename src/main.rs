//! The `razar` binary: parse the command line, set up tracing (`RAZAR_LOG`), call the library,
//! and map the outcome to an exit code in one place.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use razar::Error;
use razar::exec::Outcome;
use razar::plan;

mod cli;
mod crown_cli;
mod state_cmd;

// Loading and planning a large stack makes millions of small allocations (names, argv
// words, reasons); mimalloc serves them markedly faster than glibc's allocator
// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h: 15 in both v2 and the bundled v3, which keep
/// deprecated slots so option numbers stay stable (libmimalloc-sys does not name this one).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// `mi_option_destroy_on_exit` (22 in mimalloc.h, v2 and the bundled v3 alike). Set to 2,
/// mimalloc's exit hook returns at once instead of collecting and purging every page it holds:
/// work for a library unloaded from a running process, not for a process that is ending (the
/// kernel takes the memory back). It took ~15 ms (135 `madvise` calls) after a 2,000-task
/// apply.
const MI_OPTION_DESTROY_ON_EXIT: libmimalloc_sys::mi_option_t = 22;

/// Returns memory freed by one phase (parsing on worker threads, merging) to the OS after
/// 50 ms instead of the bundled mimalloc's default 1 s, so it does not add to a later
/// phase's peak: a 100k-component plan peaks at ~270 MB instead of ~300-370 MB. Shorter
/// delays save a little more memory but pay for it in page faults (docs/benchmarks.md).
fn tune_allocator() {
    set_purge_delay(50);
    // SAFETY: mi_option_set only stores an integer option; 2 is a documented value of this one.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_DESTROY_ON_EXIT, 2) };
}

/// For `apply`: a boot frees and reallocates the same few kinds of buffers (events, records,
/// journal lines) thousands of times a second. Returned to the OS after 50 ms, every reuse
/// faults fresh zeroed pages back in; after 1 s (mimalloc's own default) memory is still
/// given back once the boot settles into supervision, and a 2,000-task boot's scheduler
/// thread takes 352 page faults instead of 3,181 (docs/benchmarks.md).
fn tune_allocator_for_apply() {
    set_purge_delay(1000);
}

fn set_purge_delay(ms: std::os::raw::c_long) {
    // SAFETY: mi_option_set only stores an integer option; any value is valid for it.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
}

use cli::{Cli, Command, ConfigArgs, CrownCommand, PlanFormat};

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    init_tracing();
    exit_for(run(cli))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RAZAR_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn"))
        // tungstenite traces the raw upgrade request, Crown's bearer token included: never log it.
        .add_directive(
            "tungstenite::handshake::client=off"
                .parse()
                .expect("a valid static directive"),
        );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal()))
        .try_init();
}

/// Whether output to a stream that `is_terminal` (or not) gets colours: only on a terminal,
/// and never with `NO_COLOR` set (https://no-color.org).
fn colour(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The one place outcomes and errors become exit codes (see `razar --help`).
fn exit_for(result: Result<Outcome, Error>) -> ExitCode {
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(Error::Invalid(diags)) => {
            eprint!("{}", diags.render(colour(std::io::stderr().is_terminal())));
            ExitCode::from(2)
        }
        Err(Error::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Error::CrownUnavailable(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(3)
        }
        Err(Error::State(err)) if err.is_usage() => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(other) => {
            let mut message = format!("error: {other}");
            let mut source = std::error::Error::source(&other);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::from(1)
        }
    }
}

/// The config files to read: those given, else ./razar.yaml, else ./config/razar.yaml.
fn config_paths(args: &ConfigArgs) -> Result<Vec<PathBuf>, Error> {
    if !args.files.is_empty() {
        return Ok(args.files.clone());
    }
    for candidate in ["razar.yaml", "config/razar.yaml"] {
        let path = PathBuf::from(candidate);
        if path.is_file() {
            return Ok(vec![path]);
        }
    }
    Err(Error::Usage(
        "no config given and neither ./razar.yaml nor ./config/razar.yaml exists; pass one with -c FILE".to_owned(),
    ))
}

fn load_graph(args: &ConfigArgs) -> Result<razar::graph::Graph, Error> {
    let paths = config_paths(args)?;
    Ok(razar::graph::load(&paths)?)
}

/// A closed stdout (`razar plan | head`) is the reader's choice, not an error.
fn finish_stdout(result: std::io::Result<()>) -> Result<(), Error> {
    match result {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Write {
            path: PathBuf::from("<stdout>"),
            source: err,
        }),
        _ => Ok(()),
    }
}

fn run(cli: Cli) -> Result<Outcome, Error> {
    // Block-buffered: a plan can be tens of megabytes, and stdout is line-buffered.
    let mut stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    match cli.command {
        Command::Validate { config } => {
            let graph = load_graph(&config)?;
            let (n, m) = (graph.len(), graph.edge_count());
            let _ = writeln!(
                stdout,
                "ok: {n} component{}, {m} dependenc{}",
                if n == 1 { "" } else { "s" },
                if m == 1 { "y" } else { "ies" }
            );
            // As for `plan`: the OS frees a large graph faster than its destructors.
            std::mem::forget(graph);
        }
        Command::Plan {
            config,
            targets,
            format,
            out,
            parallelism,
            planning,
            suggestions,
            crown,
            offline,
        } => {
            let graph = load_graph(&config)?;
            let selected = graph.select(&targets)?;
            // Quarantined components stay out and history weighs the rest; reading state
            // never creates it and works while an apply holds the database.
            let known = razar::state::read(&graph.config().state_dir)?;
            let options = razar::learned::options(
                &graph,
                targets,
                parallelism.map(|p| p as usize),
                &planning.learning(),
                &known.history,
                &known.explored,
                known.exclusions(),
            );
            let crown = crown_cli::PlanCrown {
                suggestions,
                url: crown,
                offline,
            };
            let plan = crown_cli::plan(&graph, &selected, options, crown, &known)?;
            // Paths in plan files are relative to the directory the plan is made in.
            let base = std::env::current_dir().map_err(|source| Error::Read {
                path: PathBuf::from("."),
                source,
            })?;
            if let Some(path) = &out {
                refuse_overwriting_a_source(path, &plan.sources)?;
                razar::error::write_atomic(path, plan.to_json(&base).as_bytes())?;
            }
            let written = match format {
                PlanFormat::Json => plan.write_json(&base, &mut stdout),
                PlanFormat::Text => stdout.write_all(
                    plan::render_text(&plan, std::io::stdout().is_terminal()).as_bytes(),
                ),
                PlanFormat::Dot => stdout.write_all(graph.to_dot(&selected).as_bytes()),
                PlanFormat::Mermaid => stdout.write_all(graph.to_mermaid(&selected).as_bytes()),
                PlanFormat::MermaidGantt => {
                    stdout.write_all(plan::render_gantt_mermaid(&plan).as_bytes())
                }
            };
            finish_stdout(written.and_then(|()| stdout.flush()))?;
            if let Some(path) = &out {
                eprintln!("plan written to {}", path.display());
            }
            // The process ends here: for a 100k-component plan, freeing every allocation
            // takes longer than the OS takes to reclaim the pages.
            std::mem::forget((plan, graph));
        }
        Command::Crown {
            command:
                CrownCommand::Handshake {
                    brief,
                    config,
                    url,
                    state_dir,
                    json,
                },
        } => {
            // A config is optional here: a brief file and a URL are enough.
            let graph = match config_paths(&config) {
                Ok(paths) => Some(razar::graph::load(&paths)?),
                Err(_) if brief.is_some() => None,
                Err(err) => return Err(err),
            };
            crown_cli::handshake(brief, graph, url, state_dir, json)?;
        }
        Command::Apply {
            config,
            targets,
            resume,
            until_ready,
            keep_running,
            json,
            follow,
            parallelism,
            planning,
        } => {
            tune_allocator_for_apply();
            let (plan_file, targets) = razar::apply::split_positionals(&targets)?;
            let files = match &plan_file {
                Some(_) if !config.files.is_empty() => {
                    return Err(Error::Usage(
                        "a saved plan carries its configuration files: drop -c".to_owned(),
                    ));
                }
                Some(_) => Vec::new(),
                None => config_paths(&config).map_err(|err| {
                    // `razar apply plans/x.json` with a plan file that is not there reads as
                    // a target and ends here when there is no default config either.
                    match targets.iter().find(|t| t.ends_with(".json")) {
                        Some(missing) => Error::Usage(format!(
                            "`{missing}` is not an existing plan file, and {}",
                            err.to_string().trim_start_matches("usage: ")
                        )),
                        None => err,
                    }
                })?,
            };
            drop(stdout);
            return razar::apply::apply(razar::apply::ApplyRequest {
                files,
                targets,
                plan_file,
                resume,
                until_ready,
                keep_running,
                json,
                follow,
                parallelism: parallelism.map(|p| p as usize),
                learning: planning.learning(),
            });
        }
        Command::Bench {
            config,
            runs,
            strategies,
            simulate,
            seed,
            jitter,
            parallelism,
            pessimistic,
            json,
        } => {
            let request = razar::bench::BenchRequest {
                files: config_paths(&config)?,
                runs: runs as usize,
                strategies,
                simulate,
                seed,
                jitter,
                parallelism: parallelism.map(|p| p as usize),
                pessimistic,
            };
            let (report, outcome) = razar::bench::bench(&request)?;
            let text = if json {
                report.to_json()
            } else {
                report.render_text()
            };
            let _ = stdout.write_all(text.as_bytes());
            return Ok(outcome);
        }
        Command::Down { config, json } => {
            drop(stdout);
            return razar::apply::down(&config_paths(&config)?, json);
        }
        Command::Status { state, json } => {
            let _ = stdout.write_all(state_cmd::status(&state, json)?.as_bytes());
        }
        Command::Quarantine { action } => {
            let _ = stdout.write_all(state_cmd::quarantine(&action)?.as_bytes());
        }
        Command::Compact { state } => {
            let _ = stdout.write_all(state_cmd::compact(&state)?.as_bytes());
        }
        Command::History { state, name, json } => {
            let text = state_cmd::history(&state, name.as_deref(), json)?;
            let _ = stdout.write_all(text.as_bytes());
        }
        Command::Logs {
            state,
            name,
            follow,
            lines,
        } => state_cmd::logs(&state, &name, follow, lines, &mut stdout)?,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "razar", &mut stdout);
        }
    }
    finish_stdout(stdout.flush())?;
    Ok(Outcome::Success)
}

/// Refuses `-o PATH` when it is a directory, or one of the configuration files the plan was
/// made from: the plan would replace the configuration it needs (and a saved plan is refused
/// once its configuration changed).
fn refuse_overwriting_a_source(path: &Path, sources: &[PathBuf]) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let Ok(out) = std::fs::metadata(path) else {
        return Ok(());
    };
    if out.is_dir() {
        return Err(Error::Usage(format!(
            "`-o {}` is a directory: give the plan file's name (e.g. `-o {}`)",
            path.display(),
            path.join("plan.json").display()
        )));
    }
    for source in sources {
        if std::fs::metadata(source).is_ok_and(|s| s.dev() == out.dev() && s.ino() == out.ino()) {
            return Err(Error::Usage(format!(
                "`-o {}` is the configuration file `{}` itself: write the plan to another file (e.g. `-o plan.json`)",
                path.display(),
                source.display()
            )));
        }
    }
    Ok(())
}
