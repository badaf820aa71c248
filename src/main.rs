//! The `razar` binary: parse the command line, set up tracing (`RAZAR_LOG`), call the library,
//! and map the outcome to an exit code in one place.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use razar::Error;
use razar::exec::Outcome;
use razar::plan;

mod cli;
mod state_cmd;

use cli::{Cli, Command, ConfigArgs, PlanFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    exit_for(run(cli))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RAZAR_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The one place outcomes and errors become exit codes (see `razar --help`).
fn exit_for(result: Result<Outcome, Error>) -> ExitCode {
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(Error::Invalid(diags)) => {
            eprint!("{}", diags.render(std::io::stderr().is_terminal()));
            ExitCode::from(2)
        }
        Err(Error::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
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

fn run(cli: Cli) -> Result<Outcome, Error> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Validate { config } => {
            let graph = load_graph(&config)?;
            let _ = writeln!(
                stdout,
                "ok: {} components, {} dependencies",
                graph.len(),
                graph.edge_count()
            );
        }
        Command::Plan {
            config,
            targets,
            format,
            out,
            parallelism,
            planning,
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
            let plan = plan::build(&graph, &selected, &options);
            let text = match format {
                PlanFormat::Text => plan::render_text(&plan, std::io::stdout().is_terminal()),
                PlanFormat::Json => plan.to_json(),
                PlanFormat::Dot => graph.to_dot(&selected),
                PlanFormat::Mermaid => graph.to_mermaid(&selected),
                PlanFormat::MermaidGantt => plan::render_gantt_mermaid(&plan),
            };
            if let Some(path) = &out {
                razar::error::write_atomic(path, plan.to_json().as_bytes())?;
            }
            let _ = stdout.write_all(text.as_bytes());
            if let Some(path) = &out {
                eprintln!("plan written to {}", path.display());
            }
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
            let (plan_file, targets) = razar::apply::split_positionals(&targets)?;
            let files = match &plan_file {
                Some(_) if !config.files.is_empty() => {
                    return Err(Error::Usage(
                        "a saved plan carries its configuration files: drop -c".to_owned(),
                    ));
                }
                Some(_) => Vec::new(),
                None => config_paths(&config)?,
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
    Ok(Outcome::Success)
}
