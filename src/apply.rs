//! `razar apply` and `razar down`: the glue between the command line and the executor.
//!
//! `apply` takes the state directory's lock (by opening the [`Store`]), gets a [`Plan`] (built
//! from the configuration with the store's quarantine exclusions and history weights, or read
//! from a saved plan file and refused when stale), checks it, and runs it on a tokio runtime
//! with the event sinks in their required order (the store's recorder first, then the
//! reporter, then Crown's) and the signal listener feeding the run's [`Shutdown`]. With a
//! `crown:` section, Crown is consulted before the plan is built (`crown::session`) and the
//! link is kept for the run: status stream, mid-boot revisions, model launch records. `down`
//! stops a stack from another terminal. Neither prints anything itself except through
//! `report` (and Crown's verdict, on stderr before the boot, so `--json` output stays pure),
//! nor decides exit codes (the binary does, in one place).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use crate::crown::{self, session::RunCrown};
use crate::error::Error;
use crate::exec::{self, CancelReason, Outcome, PriorStatus, Shutdown};
use crate::plan::{self, Plan};
use crate::report::Reporter;
use crate::state::{Role, Store};

/// What `razar apply` was asked to do (the clap struct stops at the dispatcher).
#[derive(Debug, Clone, Default)]
pub struct ApplyRequest {
    /// Config files (already defaulted by the caller); empty with a plan file.
    pub files: Vec<PathBuf>,
    pub targets: Vec<String>,
    pub plan_file: Option<PathBuf>,
    pub resume: bool,
    pub until_ready: bool,
    pub keep_running: bool,
    pub json: bool,
    pub follow: bool,
    pub parallelism: Option<usize>,
    /// `--strategy`, `--pessimistic`, `--flaky-threshold`.
    pub learning: crate::learned::Learning,
}

/// Splits `apply`'s positional arguments into a saved plan file and targets: an argument that
/// names an existing file ending in `.json` (or containing a `/`) is a plan file.
pub fn split_positionals(args: &[String]) -> Result<(Option<PathBuf>, Vec<String>), Error> {
    let mut plan_file = None;
    let mut targets = Vec::new();
    for arg in args {
        let path = Path::new(arg);
        let looks_like_file = arg.ends_with(".json") || arg.contains('/');
        if looks_like_file && path.is_file() {
            if plan_file.replace(path.to_path_buf()).is_some() {
                return Err(Error::Usage("give at most one plan file".to_owned()));
            }
        } else if arg.contains('/') {
            return Err(Error::Usage(format!(
                "`{arg}` is neither a component name nor an existing plan file"
            )));
        } else {
            targets.push(arg.clone());
        }
    }
    if plan_file.is_some() && !targets.is_empty() {
        return Err(Error::Usage(
            "a saved plan already names its components: give either a plan file or targets"
                .to_owned(),
        ));
    }
    Ok((plan_file, targets))
}

/// Reads a saved plan and refuses it if its configuration changed since it was written.
pub fn load_saved_plan(path: &Path) -> Result<Plan, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // Paths in a plan file are relative to the directory it is run from.
    let base = std::env::current_dir().map_err(|source| Error::Read {
        path: PathBuf::from("."),
        source,
    })?;
    let plan = Plan::from_json(&text, &base).map_err(|err| {
        let detail = match &err {
            plan::PlanFileError::Syntax(source) => format!("{err}: {source}"),
            plan::PlanFileError::Version { .. } => err.to_string(),
        };
        Error::Usage(format!(
            "`{}` cannot be run: {detail}; write a plan with `razar plan -o FILE`",
            path.display()
        ))
    })?;
    let stale = |why: String| {
        Error::Usage(format!(
            "plan `{}` is stale: {why}; run `razar plan{} -o {}` again",
            path.display(),
            plan.sources
                .iter()
                .map(|s| format!(" -c {}", s.display()))
                .collect::<String>(),
            path.display()
        ))
    };
    // Relative paths in a plan file are relative to the directory it was made in.
    if let Some(missing) = plan.sources.iter().find(|s| !s.exists()) {
        return Err(Error::Usage(format!(
            "plan `{}` cannot be run from `{}`: its configuration file `{}` is not there (a plan's relative paths are relative to the directory it was made in: run it from there)",
            path.display(),
            base.display(),
            missing.display()
        )));
    }
    match crate::config::load(&plan.sources) {
        Ok(config) if config.content_hash() == plan.config_hash => Ok(plan),
        Ok(_) => Err(stale(
            "its configuration files changed since it was saved".to_owned(),
        )),
        Err(diags) => Err(stale(format!(
            "its configuration no longer loads ({} problem(s); `razar validate` shows them)",
            diags.len()
        ))),
    }
}

/// Builds the plan `apply` runs when no plan file is given: quarantined components are left
/// out and history weighs the rest. Opens (and locks) the state directory only once the
/// configuration is known to be valid, so bad input never writes state.
///
/// With a `crown:` section, Crown is consulted first (`crown::session::plan_for_run`): the
/// brief carries the store's status and quarantine, the reply is recorded in the store, and
/// its downtime, suggestions and missing models shape the plan.
fn build_plan(
    request: &ApplyRequest,
    runtime: &tokio::runtime::Runtime,
) -> Result<Option<(Plan, Store, Option<RunCrown>)>, Error> {
    let graph = crate::graph::load(&request.files)?;
    let selected = graph.select(&request.targets)?;
    let store = Store::open_deferred(&graph.config().state_dir)?;
    let options = crate::learned::options(
        &graph,
        request.targets.clone(),
        request.parallelism,
        &request.learning,
        &store.history(),
        &store.explored(),
        store.exclusions(),
    );
    let (status, open_issues) = crown::session::known(&store.view());
    let mut recorded = Ok(());
    // Consulting Crown can take its whole timeout: a signal meanwhile ends the apply as
    // interrupted (exit 130), nothing started.
    let mut record = |record: &serde_json::Value| recorded = store.record_handshake(record);
    let consulted = runtime.block_on(async {
        let consult = crown::session::plan_for_run(
            &graph,
            &selected,
            options,
            &status,
            open_issues,
            &mut record,
        );
        let Ok(listener) = exec::signal::Listener::install() else {
            return consult.await.map(Some);
        };
        let interrupted = Shutdown::new();
        let mut asked = interrupted.subscribe();
        tokio::select! {
            consulted = consult => consulted.map(Some),
            never = listener.listen(interrupted.clone()) => match never {},
            _ = asked.changed() => Ok(None),
        }
    })?;
    let Some((plan, crown)) = consulted else {
        return Ok(None);
    };
    recorded?;
    Ok(Some((plan, store, crown)))
}

/// Crown for a saved plan: consulted like for a fresh plan; its downtime and suggestions are
/// adopted as a revision before anything starts (a saved plan gains no steps).
fn saved_plan_crown(
    plan: &Plan,
    store: &Store,
    request: &ApplyRequest,
    runtime: &tokio::runtime::Runtime,
) -> Result<Option<RunCrown>, Error> {
    let config = crate::config::load(&plan.sources)?;
    let (status, open_issues) = crown::session::known(&store.view());
    let mut recorded = Ok(());
    let crown = runtime.block_on(crown::session::saved_plan_crown(
        plan,
        &config,
        &status,
        open_issues,
        request.parallelism,
        &mut |record| recorded = store.record_handshake(record),
    ))?;
    recorded?;
    Ok(crown)
}

/// A run id: the UTC start time and razar's pid, e.g. `20250102T030405.678Z-4242`.
pub fn new_run_id() -> String {
    let time: String = exec::now_rfc3339()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("{time}-{}", std::process::id())
}

/// `razar apply`: boots the plan, supervises it, stops it; returns how the run ended. The
/// process's last act: the state database stays locked until the process exits (see
/// [`Store::close_for_exit`]).
pub fn apply(request: ApplyRequest) -> Result<Outcome, Error> {
    let runtime = runtime()?;
    let (mut plan, store, mut crown) = match &request.plan_file {
        Some(path) => {
            let plan = load_saved_plan(path)?;
            // A broken plan file is refused before the state directory is touched.
            check(&plan)?;
            let store = Store::open_deferred(&plan.state_dir)?;
            let crown = saved_plan_crown(&plan, &store, &request, &runtime)?;
            (plan, store, crown)
        }
        None => match build_plan(&request, &runtime)? {
            Some(built) => built,
            None => return Ok(Outcome::Interrupted),
        },
    };
    // Crown's verdict (online or offline, downtime, launches) before the boot's first line.
    for line in crown.iter().flat_map(|c| &c.report) {
        eprintln!("{line}");
    }
    if let Some(crown) = crown.as_mut() {
        crown.adopt_initial(&mut plan);
    }
    if let Some(parallelism) = request.parallelism {
        plan.parallelism = parallelism;
    }
    check(&plan)?;
    if !request.resume {
        refuse_leftovers(&plan)?;
    }
    // The suggestions this plan was judged with (handshake, saved file), for `razar plan`.
    store.record_suggestions(&plan.suggestions)?;
    // Nothing starts unless the state file could be written.
    store.opened()?;

    let mut reporter = Reporter::stdout(Reporter::mode_for(
        request.json,
        std::io::stdout().is_terminal(),
    ));
    if !request.resume {
        reporter = reporter.with_predictions(&plan);
    }
    if !request.until_ready {
        reporter = reporter.with_boot_hint(
            "supervising; Ctrl-C (or `razar down`) stops the stack, a second Ctrl-C kills it",
        );
    }
    let mut options = exec::Options::new(new_run_id());
    options.resume = request.resume;
    if request.resume {
        options.priors = store.priors();
    }
    options.until_ready = request.until_ready;
    options.keep_running = request.keep_running;
    if request.follow {
        options.follow = Some(reporter.follower());
    }
    let shutdown = Shutdown::new();
    // A checkpoint that cannot be saved stops the stack: continuing would break resume's
    // promise that nothing runs twice.
    let recorder = store.recorder(&plan).on_failure({
        let shutdown = shutdown.clone();
        move |_| shutdown.request(CancelReason::Signal)
    });
    let mut sinks = exec::event::Fanout(vec![Box::new(recorder), Box::new(reporter)]);
    let result = runtime.block_on(async {
        // Crown's sinks follow the reporter; its mid-boot revisions reach the scheduler. Launch
        // outcomes and judged mid-boot suggestions go to the store: a failure to record them
        // is logged, never fatal (the boot goes on; the archive and interaction log have them).
        let mut crown = crown.map(|c| {
            let launches = store.clone();
            let judged = store.clone();
            c.start(
                &plan,
                Some(Box::new(
                    move |launch: &crate::state::crown::LaunchRecord| {
                        if let Err(err) = launches.record_model_launch(launch) {
                            tracing::warn!(target: "razar::crown", "cannot record the launch of `{}` in the state: {err}", launch.model);
                        }
                    },
                )),
                Some(Box::new(move |outcomes: &[plan::suggest::Outcome]| {
                    if let Err(err) = judged.record_suggestions(outcomes) {
                        tracing::warn!(target: "razar::crown", "cannot record Crown's suggestions in the state: {err}");
                    }
                })),
            )
        });
        let before_crown = sinks.0.len();
        if let Some(crown) = crown.as_mut() {
            sinks.0.extend(crown.sinks());
            options.revisions = crown.revisions();
        }
        let listener = exec::signal::Listener::install()?;
        let result = tokio::select! {
            result = exec::run(&plan, options, shutdown.clone(), &mut sinks) => {
                Ok::<_, std::io::Error>(result)
            }
            never = listener.listen(shutdown.clone()) => match never {},
        };
        sinks.0.truncate(before_crown);
        if let Some(crown) = crown {
            crown.finish().await;
        }
        result
    });
    // The reporter finishes its last line when dropped.
    drop(sinks);
    // Nothing runs on the runtime any more. A probe's host name lookup may still be in flight
    // on its blocking pool (getaddrinfo waits up to the resolver's timeout, 5 s by default):
    // dropping the runtime would wait for it, after "run finished" was printed.
    runtime.shutdown_background();
    if let Some(failure) = store.failure() {
        return Err(Error::Write {
            path: plan.state_dir.clone(),
            source: std::io::Error::other(failure),
        });
    }
    // The process exits next: sled's cache is left to the kernel (~14 ms with full histories).
    store.close_for_exit()?;
    match result {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(exec::RunError::InvalidPlan(problems))) => Err(Error::Usage(format!(
            "the plan cannot be executed:\n  {}",
            problems.join("\n  ")
        ))),
        Ok(Err(exec::RunError::Logs { path, source })) => Err(Error::Write { path, source }),
        Err(err) => Err(Error::Usage(format!(
            "cannot install the signal handlers: {err}"
        ))),
    }
}

pub(crate) fn check(plan: &Plan) -> Result<(), Error> {
    exec::check(plan).map_err(|problems| {
        Error::Usage(format!(
            "the plan cannot be executed:\n  {}",
            problems.join("\n  ")
        ))
    })
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Usage(format!("cannot start the async runtime: {err}")))
}

/// A fresh apply must not start a second copy of what an earlier run left running.
pub(crate) fn refuse_leftovers(plan: &Plan) -> Result<(), Error> {
    let leftovers = exec::leftovers(&plan.state_dir);
    if leftovers.is_empty() {
        return Ok(());
    }
    let planned = |name: &str| {
        plan.steps.iter().any(|s| s.name == name) || plan.excluded.iter().any(|e| e.name == name)
    };
    // A plan made for some targets does not know the rest of the configuration.
    let (kept, dropped): (Vec<_>, Vec<_>) = leftovers
        .iter()
        .partition(|t| !plan.targets.is_empty() || planned(&t.component));
    let list = |tagged: &[&exec::Tagged]| {
        let mut names: Vec<String> = tagged
            .iter()
            .map(|t| format!("{} (pid {})", t.component, t.pid))
            .collect();
        names.dedup();
        names.join(", ")
    };
    let mut advice = Vec::new();
    if !kept.is_empty() {
        advice.push(format!(
            "{}: `razar apply --resume` adopts them, `razar down` stops them",
            list(&kept)
        ));
    }
    if !dropped.is_empty() {
        advice.push(format!(
            "{}, which the configuration no longer declares: `razar down` (or `razar apply --resume`) stops them",
            list(&dropped)
        ));
    }
    Err(Error::Usage(format!(
        "components of an earlier run of `{}` are still running: {}",
        plan.state_dir.display(),
        advice.join("; ")
    )))
}

/// `razar down`: stops the stack of the configuration's state directory. With an apply running
/// there, it sends that apply SIGTERM (it then stops its stack in order, as on Ctrl-C) and
/// waits for it to exit. Otherwise it stops what an earlier run left running (the process
/// groups the state recorded, and processes found through the environment razar gives
/// components) in reverse dependency order, each with its stop signal and grace period.
pub fn down(files: &[PathBuf], json: bool) -> Result<Outcome, Error> {
    let graph = crate::graph::load(files)?;
    let selected = graph.select(&[])?;
    let plan = plan::build(&graph, &selected, &plan::Options::default());
    let mut reporter = Reporter::stdout(Reporter::mode_for(json, std::io::stdout().is_terminal()));
    // A compaction runs nothing and ends on its own: wait for it, then stop what runs.
    let mut noted = false;
    let holder = loop {
        match crate::state::holder(&plan.state_dir) {
            // A compaction, a release or another down runs nothing of the stack and ends on
            // its own: wait for it, then stop what runs.
            Some(holder) if holder.role != Role::Apply => {
                if !std::mem::replace(&mut noted, true) {
                    reporter.note(&format!(
                        "waiting: {} (pid {})",
                        holder.role.doing(),
                        holder.pid
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            holder => break holder,
        }
    };
    if let Some(holder) = holder {
        return stop_apply(holder, &mut reporter);
    }
    if !crate::state::Paths::new(&plan.state_dir).dir_exists()? {
        return down_without_state(&plan, &mut reporter);
    }
    let store = match Store::open_as(&plan.state_dir, Role::Down) {
        Ok(store) => store,
        // An apply started between the two looks: ask it to stop instead. (A compaction that
        // started meanwhile ends on its own: try again.)
        Err(crate::state::StateError::Locked { .. }) => {
            return match crate::state::holder(&plan.state_dir) {
                Some(holder) if holder.role == Role::Apply => stop_apply(holder, &mut reporter),
                _ => Err(Error::Usage(format!(
                    "another razar holds `{}`; try again",
                    plan.state_dir.display()
                ))),
            };
        }
        // The state cannot be used (damaged, not writable): what carries its environment is
        // still found and stopped, with nothing recorded.
        Err(err) => {
            tracing::warn!(
                "{err}; stopping what carries the environment of `{}` without recording it",
                plan.state_dir.display()
            );
            return down_without_state(&plan, &mut reporter);
        }
    };
    // The recorded groups whose leader is gone or is still the recorded process (a reused pid
    // leading someone else's group is never signalled).
    let groups: BTreeMap<String, u32> = store
        .priors()
        .into_iter()
        .filter(|(_, prior)| prior.status == PriorStatus::Running)
        .filter_map(|(name, prior)| {
            let pid = prior.pid?;
            let pgid = prior.pgid.unwrap_or(pid);
            let ours = pid != pgid
                || !exec::process_alive(pid, None)
                || prior
                    .start_time
                    .is_some_and(|start| exec::process_alive(pid, Some(start)));
            // A state directory copied while its stack ran records the original's processes.
            let elsewhere = exec::belongs_elsewhere(pgid, &plan.state_dir);
            (ours && !elsewhere).then_some((name, pgid))
        })
        .collect();
    let mut recorder = store.recorder(&plan);
    let stopped = stop_leftovers(&plan, &groups, &mut Both(&mut recorder, &mut reporter))?;
    drop(recorder);
    if let Some(failure) = store.failure() {
        return Err(Error::Write {
            path: plan.state_dir.clone(),
            source: std::io::Error::other(failure),
        });
    }
    store.close()?;
    if stopped == 0 {
        reporter.note(&format!(
            "nothing of `{}` is running",
            plan.state_dir.display()
        ));
    }
    Ok(Outcome::Success)
}

/// `razar down` for a state directory that does not exist (never created, or removed while its
/// stack ran): stops the processes that still carry its environment, records nothing, and
/// creates nothing (a mistyped `state_dir` leaves no empty state behind).
fn down_without_state(plan: &Plan, reporter: &mut Reporter) -> Result<Outcome, Error> {
    let stopped = if exec::leftovers(&plan.state_dir).is_empty() {
        0
    } else {
        stop_leftovers(plan, &BTreeMap::new(), reporter)?
    };
    if stopped == 0 {
        reporter.note(&format!(
            "nothing of `{}` is running",
            plan.state_dir.display()
        ));
    }
    Ok(Outcome::Success)
}

/// Stops what an earlier run left (the recorded `groups`, and processes found by environment),
/// signals meanwhile handled as during a run (a second one kills at once); returns how many
/// components had something to stop.
fn stop_leftovers(
    plan: &Plan,
    groups: &BTreeMap<String, u32>,
    sink: &mut dyn exec::Sink,
) -> Result<usize, Error> {
    let shutdown = Shutdown::new();
    runtime()?
        .block_on(async {
            let listener = exec::signal::Listener::install()?;
            tokio::select! {
                stopped = exec::stop_leftovers(plan, groups, &shutdown, sink) => {
                    Ok::<_, std::io::Error>(stopped)
                }
                never = listener.listen(shutdown.clone()) => match never {},
            }
        })
        .map_err(|err| Error::Usage(format!("cannot install the signal handlers: {err}")))
}

/// Two sinks in order (the state's recorder, then the reporter), borrowed so the reporter can
/// still be used afterwards.
struct Both<'a>(&'a mut dyn exec::Sink, &'a mut dyn exec::Sink);

impl exec::Sink for Both<'_> {
    fn emit(&mut self, event: &exec::Event) {
        self.0.emit(event);
        self.1.emit(event);
    }
}

/// Asks the apply holding the state directory to stop its stack, and waits until it exited.
fn stop_apply(holder: crate::state::Holder, reporter: &mut Reporter) -> Result<Outcome, Error> {
    reporter.note(&format!(
        "asking razar apply (pid {}) to stop its stack",
        holder.pid
    ));
    exec::send_signal(holder.pid, "SIGTERM").map_err(|err| {
        Error::Usage(format!(
            "cannot signal razar apply (pid {}): {err}",
            holder.pid
        ))
    })?;
    let mut pause = std::time::Duration::from_millis(1);
    while exec::process_alive(holder.pid, holder.start_time) {
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
    reporter.note(&format!("razar apply (pid {}) stopped", holder.pid));
    Ok(Outcome::Success)
}
