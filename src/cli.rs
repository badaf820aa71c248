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
  130  interrupted (a signal or `razar down` before the boot finished)";

#[derive(Debug, Parser)]
#[command(
    name = "razar",
    version,
    about = "Declarative boot planner and executor for local services",
    long_about = "razar reads the components of a service stack (services and tasks, their \
dependencies, readiness probes and restart policies), compiles them into a dependency DAG, \
shows the boot order it will use (`razar plan`), validates configurations (`razar validate`), \
boots the stack and supervises it (`razar apply`) and stops it (`razar down`).",
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
        #[command(flatten)]
        planning: PlanningArgs,
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
    /// Boot the stack in dependency order, then supervise it until Ctrl-C or `razar down`.
    ///
    /// Components start as soon as their dependencies reach their condition and a start-up
    /// slot is free; services are restarted per their policy and quarantined when their
    /// attempts run out. The first SIGINT/SIGTERM/SIGHUP stops the stack in reverse dependency
    /// order, a second one kills it at once.
    #[command(after_help = EXIT_CODES)]
    Apply {
        #[command(flatten)]
        config: ConfigArgs,
        /// Components to boot with everything they depend on (default: all), or a plan file
        /// saved by `razar plan -o` (refused if its configuration changed since).
        #[arg(value_name = "TARGET|PLAN.json")]
        targets: Vec<String>,
        /// Re-adopt the components an interrupted run left running (same pid and start time,
        /// probe passing), skip the tasks it completed, start the rest.
        #[arg(long)]
        resume: bool,
        /// Return once every selected component is up (then stop the stack, unless
        /// --keep-running).
        #[arg(long)]
        until_ready: bool,
        /// With --until-ready: leave the services running (for `razar down` or --resume).
        #[arg(long, requires = "until_ready")]
        keep_running: bool,
        /// One JSON event per line on stdout (schemas/events.schema.json).
        #[arg(long)]
        json: bool,
        /// Show the components' output live, prefixed with their name.
        #[arg(long)]
        follow: bool,
        /// Components in their start-up phase at once (default: the config's, else CPU count).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        parallelism: Option<u32>,
        #[command(flatten)]
        planning: PlanningArgs,
    },
    /// Compare ordering strategies: boot the stack to ready N times per strategy (or simulate
    /// it), and print time to ready per strategy against the lower bound.
    ///
    /// Real runs are recorded in history like any apply (the stack is shut down cleanly after
    /// each). `explore` stores the best order it finds for this configuration; later plans
    /// use it.
    #[command(after_help = EXIT_CODES)]
    Bench {
        #[command(flatten)]
        config: ConfigArgs,
        /// Boots per strategy.
        #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        runs: u32,
        /// Strategies to compare, comma-separated.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "priority,critical-path,explore"
        )]
        strategies: Vec<Strategy>,
        /// Simulate the boots on predicted durations instead of starting processes: each run
        /// samples every component's duration from its history range (else its estimate
        /// ±jitter), the same samples for every strategy.
        #[arg(long)]
        simulate: bool,
        /// Seed of the simulated samples (same seed, same figures).
        #[arg(long, value_name = "N", default_value_t = 1, requires = "simulate")]
        seed: u64,
        /// Relative jitter of simulated durations without history (0.1 = ±10%).
        #[arg(long, value_name = "F", default_value_t = 0.1, requires = "simulate")]
        jitter: f64,
        /// Components in their start-up phase at once (default: the config's, else CPU count).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        parallelism: Option<u32>,
        /// Weigh components by their history p90 instead of p50.
        #[arg(long)]
        pessimistic: bool,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop a stack: signal the running `razar apply`, or stop what an earlier
    /// `apply --until-ready --keep-running` (or a killed apply) left running.
    #[command(after_help = EXIT_CODES)]
    Down {
        #[command(flatten)]
        config: ConfigArgs,
        /// One JSON event per line on stdout.
        #[arg(long)]
        json: bool,
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
    /// Rewrite the state database without the space sled leaves behind as it ages (it grows
    /// by more than the data it holds on every boot). Refused while an apply runs.
    #[command(after_help = EXIT_CODES)]
    Compact {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// How to order the boot.
#[derive(Debug, clap::Args)]
pub struct PlanningArgs {
    /// Ordering strategy. Default: `explore` when a search stored an order for this
    /// configuration, `critical-path` once history exists, else `priority`.
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// Weigh components by their history p90 instead of p50.
    #[arg(long)]
    pub pessimistic: bool,
    /// Failure rate (0 to 1) from which a component is flagged flaky in the plan.
    #[arg(long, value_name = "RATE", default_value_t = razar::plan::DEFAULT_FLAKY_THRESHOLD, value_parser = rate)]
    pub flaky_threshold: f64,
}

impl PlanningArgs {
    pub fn learning(&self) -> razar::learned::Learning {
        razar::learned::Learning {
            strategy: self.strategy,
            pessimistic: self.pessimistic,
            flaky_threshold: self.flaky_threshold,
        }
    }
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{text}` is not a rate between 0 and 1 (e.g. 0.2)")),
    }
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
