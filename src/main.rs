//! The `razar` binary: parse the command line, set up tracing (`RAZAR_LOG`), call the library,
//! and map the outcome to an exit code in one place.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use razar::Error;
use razar::plan;

mod cli;
mod crown_cli;
mod state_cmd;

use cli::{Cli, Command, ConfigArgs, CrownCommand, PlanFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(err) => exit_for(err),
    }
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
        .try_init();
}

/// The one place errors become exit codes (see `razar --help`).
fn exit_for(err: Error) -> ExitCode {
    match err {
        Error::Invalid(diags) => {
            eprint!("{}", diags.render(std::io::stderr().is_terminal()));
            ExitCode::from(2)
        }
        Error::Usage(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Error::CrownUnavailable(message) => {
            eprintln!("error: {message}");
            ExitCode::from(3)
        }
        Error::State(err) if err.is_usage() => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        other => {
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

fn run(cli: Cli) -> Result<ExitCode, Error> {
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
            strategy,
            suggestions,
            crown,
            offline,
        } => {
            let graph = load_graph(&config)?;
            let selected = graph.select(&targets)?;
            // Quarantined components stay out and history weighs the rest; reading state
            // never creates it and works while an apply holds the database.
            let known = razar::state::read(&graph.config().state_dir)?;
            let mut options = plan::Options {
                targets,
                parallelism: parallelism.map(|p| p as usize),
                strategy,
                ..plan::Options::default()
            };
            options.exclude = known.exclusions();
            options.history = razar::state::weights(&known.history, graph.components(), false);
            let crown = crown_cli::PlanCrown {
                suggestions,
                url: crown,
                offline,
            };
            let plan = crown_cli::plan(&graph, &selected, options, crown, &known)?;
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
    Ok(ExitCode::SUCCESS)
}
