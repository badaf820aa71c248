//! The command line (clap derive): commands and flags only, no logic.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use razar::plan::Strategy;

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    a component failed or was quarantined (or razar could not write its files)
  2    bad input or usage: every problem is printed, nothing is started or written
  3    Crown is required (`crown.required: true`) but unreachable, or refused the handshake:
       nothing was started
  130  interrupted";

#[derive(Debug, Parser)]
#[command(
    name = "razar",
    version,
    about = "Declarative boot planner and executor for local services",
    long_about = "razar reads the components of a service stack (services and tasks, their \
dependencies, readiness probes and restart policies), compiles them into a dependency DAG, \
shows the boot order it will use (`razar plan`) and validates configurations (`razar validate`).",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Config files to read; several are merged by component name.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Config file (razar.yaml/.json, or ABZU's boot_config.json, razar_config.yaml,
    /// razar_env.yaml, component_priorities.yaml, system_blueprint.md). Repeat to merge.
    /// Default: ./razar.yaml, else ./config/razar.yaml.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check configuration files and report every problem at once.
    #[command(after_help = EXIT_CODES)]
    Validate {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Show the boot order razar will use, with a predicted timeline and the reason for each step.
    #[command(after_help = EXIT_CODES)]
    Plan {
        #[command(flatten)]
        config: ConfigArgs,
        /// Components to boot, with everything they depend on (default: all).
        #[arg(value_name = "TARGET")]
        targets: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Also write the plan file (JSON, with a content hash of the inputs) here.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
        /// Components in their start-up phase at once (default: the config's, else CPU count).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        parallelism: Option<u32>,
        /// Ordering strategy.
        #[arg(long, value_enum, default_value_t = Strategy::Priority)]
        strategy: Strategy,
        /// Merge the Crown suggestions in this file (`{"type": "suggestions", "items": […]}`),
        /// after any Crown sends: works offline.
        #[arg(long, value_name = "FILE")]
        suggestions: Option<PathBuf>,
        /// Exchange the mission brief with the Crown at this URL first (overrides `crown.url`)
        /// and plan with its downtime, suggestions and missing models.
        #[arg(long, value_name = "URL", conflicts_with = "offline")]
        crown: Option<String>,
        /// Do not contact Crown, even when the config has a `crown:` section.
        #[arg(long)]
        offline: bool,
    },
    /// Talk to Crown outside a boot (see docs/crown-protocol.md).
    Crown {
        #[command(subcommand)]
        command: CrownCommand,
    },
    /// Show each component's state, pid, uptime, restarts, last probe and quarantine, whether
    /// or not an apply is running.
    #[command(after_help = EXIT_CODES)]
    Status {
        #[command(flatten)]
        state: StateArgs,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List, inspect or release quarantined components (left out of plans until released).
    #[command(after_help = EXIT_CODES)]
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Print a component's captured output (`<state_dir>/logs/NAME.log`).
    #[command(after_help = EXIT_CODES)]
    Logs {
        #[command(flatten)]
        state: StateArgs,
        /// The component.
        name: String,
        /// Keep printing what it writes, across log rotation, until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(short = 'n', long, value_name = "N")]
        lines: Option<usize>,
    },
    /// Show what razar learned about each component's time to ready: samples, p50, p90,
    /// failure rate, last seen.
    #[command(after_help = EXIT_CODES)]
    History {
        #[command(flatten)]
        state: StateArgs,
        /// Only this component.
        name: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum CrownCommand {
    /// Exchange a mission brief with Crown, print its reply and archive both in
    /// `<state_dir>/mission_briefs/`.
    #[command(after_help = EXIT_CODES)]
    Handshake {
        /// The brief to send (ABZU's mission brief: priority_map, current_status,
        /// open_issues). Default: built from the config.
        #[arg(value_name = "BRIEF.json")]
        brief: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
        /// Crown's WebSocket URL (default: `crown.url`, else CROWN_WS_URL).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Where to archive the exchange (default: the config's state_dir, else ./.razar).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Print the handshake record as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Where the state directory is: the config's `state_dir`, or `--state-dir`.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// State directory to use instead of the config's `state_dir` (no config needed then).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineAction {
    /// List quarantined components.
    List {
        #[command(flatten)]
        state: StateArgs,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one quarantine record: reason, failure class, hint and log tail.
    Show {
        #[command(flatten)]
        state: StateArgs,
        name: String,
        /// JSON (the record as `quarantine/NAME.json` holds it).
        #[arg(long)]
        json: bool,
    },
    /// Release a component: later plans include it again. Refused while an apply runs.
    Release {
        #[command(flatten)]
        state: StateArgs,
        name: String,
        /// What was fixed, recorded in quarantine_log.md.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// A table in boot order (with a Gantt bar per step on a terminal).
    Text,
    /// The plan file format (schemas/plan.schema.json).
    Json,
    /// Graphviz dot of the DAG.
    Dot,
    /// A mermaid flowchart of the DAG, as in ABZU's docs.
    Mermaid,
    /// A mermaid gantt chart of the predicted timeline.
    MermaidGantt,
}
