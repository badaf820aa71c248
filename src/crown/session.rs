//! What a Crown handshake means for a boot: build the mission brief, exchange it (recording
//! the exchange through `state`), and turn Crown's reply into planning input — downtime to
//! exclude, suggestions to merge, and launch tasks for the models Crown lacks.
//!
//! The plan stays the planner's: this module only prepares the graph and [`Options`] that
//! `plan::build` receives. It never prints; callers report what it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde_json::{Value, json};

use super::link::{self, Connected, Failed, Settings};
use super::protocol::{self, Brief, HandshakeAck, OpenIssue};
use crate::config::{self, Component, Config, Format, Kind, Origin, Restart, RestartMode};
use crate::error::Error;
use crate::graph::{self, Graph};
use crate::plan::suggest::{Source, Sourced, Suggestion};
use crate::plan::{Options, Plan, Reason, ReasonKind};
use crate::state::crown::{Archive, Interaction};

/// Model launch tasks are named `crown-model.<capability>`.
pub const MODEL_PREFIX: &str = "crown-model.";

/// The brief for a boot of `selected`: each component's priority, its last known state
/// (`unknown` when razar has none) and the open issues.
pub fn brief(
    graph: &Graph,
    selected: &BTreeSet<usize>,
    status: &BTreeMap<String, String>,
    open_issues: Vec<OpenIssue>,
) -> Brief {
    let components = graph.components();
    Brief {
        priority_map: selected
            .iter()
            .map(|&i| (components[i].name.clone(), components[i].priority))
            .collect(),
        current_status: selected
            .iter()
            .map(|&i| {
                let name = &components[i].name;
                let state = status.get(name).map_or("unknown", String::as_str);
                (name.clone(), state.to_owned())
            })
            .collect(),
        open_issues,
    }
}

/// Reads a brief file: ABZU's mission brief (`priority_map`, `current_status`,
/// `open_issues`), or a whole `handshake` message carrying one under `brief`.
pub fn load_brief(path: &std::path::Path) -> Result<Brief, crate::diag::Diagnostics> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        brief: Option<Brief>,
        #[serde(flatten)]
        bare: Brief,
    }
    let hint = r#"a brief is {"priority_map": {"api": 1}, "current_status": {"api": "ready"}, "open_issues": []}"#;
    let (file, text): (File, String) = crate::plan::suggest::read_json(path, "brief", hint)?;
    // A bare brief's keys are known: a misspelt one would send an empty brief unnoticed. A
    // handshake message carrying one under `brief` has other keys of its own.
    if file.brief.is_none() {
        const KEYS: [&str; 3] = ["priority_map", "current_status", "open_issues"];
        let value: Value = serde_json::from_str(&text).unwrap_or_default();
        let keys: Vec<&str> = value
            .as_object()
            .map(|map| map.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let unknown: Vec<&str> = keys.iter().copied().filter(|k| !KEYS.contains(k)).collect();
        if !unknown.is_empty() || keys.is_empty() {
            let message = if unknown.is_empty() {
                "the file holds no brief".to_owned()
            } else {
                format!(
                    "unknown key(s) in a brief: {}",
                    unknown
                        .iter()
                        .map(|k| match crate::graph::nearest(k, KEYS.into_iter()) {
                            Some(near) => format!("`{k}` (did you mean `{near}`?)"),
                            None => format!("`{k}`"),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let mut diags = crate::diag::Diagnostics::new();
            diags.push(crate::diag::Problem::file(path, message).with_hint(hint));
            return Err(diags);
        }
    }
    Ok(file.brief.unwrap_or(file.bare))
}

/// What the state store knows that a brief carries: each component's last status, and the
/// quarantined components (with their reasons) as open issues.
pub fn known(view: &crate::state::View) -> (BTreeMap<String, String>, Vec<OpenIssue>) {
    let status = view
        .components
        .iter()
        .map(|(name, record)| (name.clone(), record.status.as_str().to_owned()))
        .collect();
    let issues = view
        .exclusions()
        .into_iter()
        .map(|(id, detail)| OpenIssue { id, detail })
        .collect();
    (status, issues)
}

/// The suggestions of the last recorded handshake (`razar plan` lists them when it does not
/// consult Crown itself), with when they came.
pub fn latest_suggestions(view: &crate::state::View) -> Option<(String, Vec<Suggestion>)> {
    let items: Vec<Suggestion> = view
        .crown
        .extra
        .get("suggestions")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .filter(|items: &Vec<Suggestion>| !items.is_empty())?;
    let at = view
        .crown
        .extra
        .get("at")
        .and_then(Value::as_str)
        .unwrap_or("an earlier handshake")
        .to_owned();
    Some((at, items))
}

/// How a handshake ended.
#[derive(Debug)]
pub enum Reached {
    Online(Box<Connected>),
    Offline(Box<Failed>),
}

/// A recorded handshake.
#[derive(Debug)]
pub struct Exchange {
    /// The stamp naming the archived brief/response pair.
    pub stamp: String,
    pub reached: Reached,
}

impl Exchange {
    /// One line for the operator and the interaction log.
    pub fn summary(&self) -> String {
        match &self.reached {
            Reached::Online(c) => ack_summary(&c.ack, c.early_suggestions.len()),
            Reached::Offline(f) => format!("offline: {}", f.summary()),
        }
    }

    /// What the state keeps under `handshake`: the reply, or why there was none.
    pub fn record(&self, settings: &Settings) -> Value {
        match &self.reached {
            Reached::Online(c) => json!({
                "outcome": "ok",
                "at": c.at,
                "url": settings.display_url(),
                "attempts": c.attempts,
                "acknowledgement": c.ack.ack,
                "protocol": c.ack.protocol,
                "capabilities": c.ack.capabilities,
                "downtime": c.ack.downtime,
                "suggestions": c.ack.suggestions.iter().chain(&c.early_suggestions).collect::<Vec<_>>(),
                "mission_brief": self.stamp,
            }),
            Reached::Offline(f) => json!({
                "outcome": if f.refused.is_some() { "refused" } else { "offline" },
                "at": f.at,
                "url": settings.display_url(),
                "attempts": f.attempts,
                "error": f.summary(),
                "errors": f.errors,
                "acknowledgement": f.refused.as_ref().map(|(ack, _)| ack.ack.clone()),
                "mission_brief": self.stamp,
            }),
        }
    }
}

/// `ack ok; capabilities GLM4V; downtime vision; 2 suggestion(s)`.
pub fn ack_summary(ack: &HandshakeAck, early: usize) -> String {
    let list = |items: Vec<&str>| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    format!(
        "ack {}; capabilities {}; downtime {}; {} suggestion(s)",
        ack.ack,
        list(ack.capabilities.iter().map(String::as_str).collect()),
        list(ack.downtime.keys().map(String::as_str).collect()),
        ack.suggestions.len() + early
    )
}

/// Exchanges the brief with Crown and records the exchange: the brief/response pair in
/// `mission_briefs/` and a line in `interaction_log.jsonl`. An unreachable Crown is an
/// outcome, not an error; only failing to write the records is.
pub async fn handshake(
    settings: &Settings,
    brief: &Brief,
    archive: &Archive,
    initiator: &str,
) -> Result<Exchange, Error> {
    let reached = match link::handshake(settings, brief).await {
        Ok(connected) => Reached::Online(Box::new(connected)),
        Err(failed) => Reached::Offline(Box::new(failed)),
    };
    let (sent, response) = match &reached {
        Reached::Online(c) => (c.sent.clone(), c.raw.clone()),
        Reached::Offline(f) => (
            f.sent.clone(),
            match &f.refused {
                Some((_, raw)) => raw.clone(),
                None => offline_response(settings, f),
            },
        ),
    };
    let stamp = archive.record_handshake(SystemTime::now(), &sent, &response)?;
    let exchange = Exchange { stamp, reached };
    archive.log(&Interaction {
        timestamp: link::now_rfc3339(),
        initiator: initiator.to_owned(),
        action: "handshake".to_owned(),
        response_summary: exchange.summary(),
    })?;
    Ok(exchange)
}

/// The `_response.json` razar archives when no reply came
/// (`schemas/crown/offline_response.schema.json`).
pub fn offline_response(settings: &Settings, failed: &Failed) -> Value {
    json!({
        "type": "razar_offline",
        "url": settings.display_url(),
        "attempts": failed.attempts,
        "elapsed_ms": crate::duration::millis(failed.elapsed),
        "error": failed.summary(),
        "errors": failed.errors,
    })
}

/// What Crown's reply changes for this boot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advice {
    /// Components under downtime, with the reason to show.
    pub downtime: BTreeMap<String, String>,
    pub suggestions: Vec<Sourced>,
    /// Indices into `config.crown.models` of the models Crown does not advertise.
    pub missing_models: Vec<usize>,
    /// Things the operator should know (downtime naming no component, protocol mismatch).
    pub notes: Vec<String>,
}

/// Reads Crown's reply against the configuration.
pub fn advise(config: &Config, ack: &HandshakeAck, early: &[Suggestion], at: &str) -> Advice {
    let mut advice = Advice::default();
    if let Some(version) = ack.protocol
        && version != protocol::PROTOCOL
    {
        advice.notes.push(format!(
            "Crown speaks protocol {version}, razar speaks {}: messages razar does not know are skipped",
            protocol::PROTOCOL
        ));
    }
    advice.notes.extend(ack.malformed.iter().cloned());
    for (key, downtime) in &ack.downtime {
        let matched = config.component(key).map(|c| c.name.clone()).or_else(|| {
            let wanted = config::normalize(key);
            config
                .components
                .iter()
                .find(|c| config::normalize(&c.name) == wanted)
                .map(|c| c.name.clone())
        });
        match matched {
            Some(name) => {
                let mut reason = String::from("Crown downtime");
                if !downtime.description.trim().is_empty() {
                    reason.push_str(": ");
                    reason.push_str(downtime.description.trim());
                }
                if let Some(until) = &downtime.until {
                    reason.push_str(&format!(" (until {until})"));
                }
                advice.downtime.insert(name, reason);
            }
            None => advice.notes.push(format!(
                "Crown lists `{key}` under downtime, but no component is named so: ignored"
            )),
        }
    }
    advice.suggestions = ack
        .suggestions
        .iter()
        .chain(early)
        .map(|suggestion| Sourced {
            source: Source::Handshake { at: at.to_owned() },
            suggestion: suggestion.clone(),
        })
        .collect();
    if let Some(crown) = &config.crown {
        advice.missing_models = crown
            .models
            .iter()
            .enumerate()
            .filter(|(_, m)| !protocol::advertises(&ack.capabilities, &m.capability, &m.aliases))
            .map(|(i, _)| i)
            .collect();
    }
    advice
}

/// The task name for a model launch: `crown-model.<capability>`, kept a valid component
/// name and distinct from every declared one.
pub fn model_task_name(config: &Config, capability: &str) -> String {
    let safe: String = capability
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64 - MODEL_PREFIX.len() - 3)
        .collect();
    let base = format!("{MODEL_PREFIX}{safe}");
    if config.component(&base).is_none() {
        return base;
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|name| config.component(name).is_none())
        .expect("some numbered name is free")
}

/// The graph with a launch task for each missing model, started before every component
/// (the reserved lowest priority, which no suggestion can undercut; no dependencies), and
/// the indices of those tasks. Components do not
/// wait for a launch: a model that fails to start does not hold the boot.
pub fn with_model_launches(graph: &Graph, missing: &[usize]) -> (Graph, Vec<usize>) {
    let Some(crown) = graph
        .config()
        .crown
        .as_ref()
        .filter(|_| !missing.is_empty())
    else {
        return (graph.clone(), Vec::new());
    };
    let mut config = graph.config().clone();
    // The launch command is written in the native config: run it from that file's folder.
    let home = config
        .sources
        .iter()
        .find(|s| s.format == Format::Native)
        .or(config.sources.first());
    let file = home.map(|s| s.path.clone()).unwrap_or_default();
    let cwd = home
        .and_then(|s| s.path.parent())
        .map(|d| {
            if d.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                d
            }
        })
        .and_then(|d| std::path::absolute(d).ok());
    let mut added = Vec::new();
    for &m in missing {
        let Some(model) = crown.models.get(m) else {
            continue;
        };
        let name = model_task_name(&config, &model.capability);
        let index = config.push_component(Component {
            name,
            kind: Kind::Task,
            command: Some(model.launch.clone()),
            depends_on: Vec::new(),
            priority: crate::plan::suggest::RESERVED_PRIORITY,
            ready: None,
            restart: Restart {
                policy: RestartMode::Never,
                max_attempts: 1,
                backoff: config::default_restart().backoff,
            },
            stop: config::default_stop(),
            env: BTreeMap::new(),
            cwd: cwd.clone(),
            path: Vec::new(),
            layer: None,
            tests: None,
            estimate: None,
            daemonizes: false,
            optional: true,
            notes: vec![format!(
                "launches model `{}`: Crown does not advertise it",
                model.capability
            )],
            origin: Origin {
                file: file.clone(),
                pointer: Some(format!("/crown/models/{m}")),
                line: None,
            },
        });
        added.push(index);
    }
    let graph = graph::compile(config)
        .expect("model launch tasks have no dependencies, so the graph stays acyclic");
    (graph, added)
}

/// Everything a handshake contributes to planning, applied to `options`: downtime joins the
/// exclusions; Crown's suggestions come first (a suggestions file given by the operator is
/// applied after them, so it has the last word).
pub fn apply_advice(options: &mut Options, advice: &Advice) {
    for (name, reason) in &advice.downtime {
        options
            .exclude
            .entry(name.clone())
            .or_insert_with(|| reason.clone());
    }
    let mut suggestions = advice.suggestions.clone();
    suggestions.append(&mut options.suggestions);
    options.suggestions = suggestions;
}

/// What consulting Crown before a plan changes: the graph (with model launch tasks), the
/// selection (with those tasks), and the advice already applied to the options.
#[derive(Debug)]
pub struct Consulted {
    pub exchange: Exchange,
    /// The brief sent (re-sent, with current status, on every reconnect during a boot).
    pub brief: Brief,
    pub graph: Graph,
    pub selected: BTreeSet<usize>,
    pub model_tasks: Vec<usize>,
    /// Empty when Crown was not reached.
    pub advice: Advice,
}

impl Consulted {
    /// Lines for the operator: online or offline, and anything worth noting.
    pub fn report(&self, settings: &Settings) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(var) = &settings.token_missing {
            lines.push(format!(
                "crown: `{var}` is not set: connected without a token"
            ));
        }
        match &self.exchange.reached {
            Reached::Online(c) => lines.push(format!(
                "crown: online at {} ({}; {} attempt(s))",
                settings.display_url(),
                ack_summary(&c.ack, c.early_suggestions.len()),
                c.attempts
            )),
            Reached::Offline(f) => lines.push(format!(
                "crown: offline — {}; continuing without Crown",
                f.summary()
            )),
        }
        for name in self.advice.downtime.keys() {
            lines.push(format!(
                "crown: `{name}` is under downtime: skipped for this boot"
            ));
        }
        for &i in &self.model_tasks {
            lines.push(format!(
                "crown: `{}` will launch a model Crown lacks",
                self.graph.components()[i].name
            ));
        }
        for note in &self.advice.notes {
            lines.push(format!("crown: {note}"));
        }
        lines
    }
}

/// Exchanges the brief for `selected` with Crown, records it, and applies the reply to
/// `options`. A required Crown that cannot be reached (or refuses) is an error; otherwise
/// planning continues offline, unchanged.
#[expect(
    clippy::too_many_arguments,
    reason = "each input is a distinct part of the brief or its record"
)]
pub async fn consult(
    graph: &Graph,
    selected: &BTreeSet<usize>,
    options: &mut Options,
    settings: &Settings,
    archive: &Archive,
    status: &BTreeMap<String, String>,
    open_issues: Vec<OpenIssue>,
    initiator: &str,
    on_record: &mut dyn FnMut(&Value),
) -> Result<Consulted, Error> {
    let brief = brief(graph, selected, status, open_issues);
    let exchange = handshake(settings, &brief, archive, initiator).await?;
    // Recorded before a required Crown's absence stops the boot: the state says why.
    on_record(&exchange.record(settings));
    let advice = match &exchange.reached {
        Reached::Offline(failed) if settings.required => {
            return Err(Error::CrownUnavailable(format!(
                "Crown is required (`crown.required: true`) but {}; nothing was started",
                failed.summary().trim_start_matches("Crown ")
            )));
        }
        Reached::Offline(_) => Advice::default(),
        Reached::Online(c) => advise(graph.config(), &c.ack, &c.early_suggestions, &c.at),
    };
    apply_advice(options, &advice);
    let (graph, model_tasks) = with_model_launches(graph, &advice.missing_models);
    let mut selected = selected.clone();
    selected.extend(&model_tasks);
    Ok(Consulted {
        exchange,
        brief,
        graph,
        selected,
        model_tasks,
        advice,
    })
}

/// Crown's part in a boot (`razar apply`), from the handshake to the end of the status
/// stream. Start it before the executor, give the executor its [`Boot::sinks`], feed the
/// suggestions Crown sends mid-boot ([`Boot::suggestions`]) to `plan::suggest::revise`, and
/// [`Boot::finish`] it once the run has ended.
pub struct Boot {
    settings: Settings,
    archive: Archive,
    stamp: String,
    status: link::StatusSink,
    pump: tokio::task::JoinHandle<link::Stats>,
    finish: Option<tokio::sync::oneshot::Sender<()>>,
    suggestions: Option<tokio::sync::mpsc::Receiver<Vec<Sourced>>>,
}

impl Boot {
    /// Starts the link for a boot whose handshake is `exchange` (online or not: an offline
    /// start keeps trying to connect, so a Crown that comes up mid-boot hears the status).
    pub fn start(settings: Settings, archive: Archive, exchange: Exchange, brief: Brief) -> Boot {
        let stamp = exchange.stamp.clone();
        // A Crown that refused the brief is not asked again during the run (an unreachable
        // one is: it may come up mid-boot).
        let live = match exchange.reached {
            Reached::Online(connected) => {
                link::Live::spawn(settings.clone(), Some(*connected), brief)
            }
            Reached::Offline(ref failed) if failed.refused.is_some() => {
                link::Live::refused(settings.clone(), brief)
            }
            Reached::Offline(_) => link::Live::spawn(settings.clone(), None, brief),
        };
        let status = live.sink();
        let (finish, finished) = tokio::sync::oneshot::channel();
        // Bounded: a boot whose caller stops reading suggestions loses the newest, never blocks.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let pump = tokio::spawn(pump(live, archive.clone(), tx, finished, settings.timeout));
        Boot {
            settings,
            archive,
            stamp,
            status,
            pump,
            finish: Some(finish),
            suggestions: Some(rx),
        }
    }

    /// The sinks to add to the run's fan-out (after the state store): the status stream, and
    /// the recorder of the model launches among `plan`'s steps.
    pub fn sinks(
        &self,
        graph: &Graph,
        model_tasks: &[usize],
        on_launch: Option<crate::state::crown::LaunchHook>,
    ) -> Vec<Box<dyn crate::exec::Sink>> {
        let launches = model_tasks
            .iter()
            .filter_map(|&i| {
                let component = graph.components().get(i)?;
                let model = model_of(graph, component)?;
                Some(crate::state::crown::Launch {
                    step: component.name.clone(),
                    model: model.capability.clone(),
                    command: model.launch.display(),
                })
            })
            .collect();
        let mut recorder = crate::state::crown::LaunchRecorder::new(
            self.archive.clone(),
            self.stamp.clone(),
            launches,
        );
        if let Some(hook) = on_launch {
            recorder = recorder.with_hook(hook);
        }
        vec![Box::new(self.status.clone()), Box::new(recorder)]
    }

    /// Suggestions Crown sends during the boot, with their provenance (once).
    pub fn suggestions(&mut self) -> Option<tokio::sync::mpsc::Receiver<Vec<Sourced>>> {
        self.suggestions.take()
    }

    /// Ends the status stream (sending what is queued, within the timeout), closes the
    /// connection and logs the stream's counts. Call after the run ended (its sinks dropped).
    pub async fn finish(mut self) -> link::Stats {
        if let Some(finish) = self.finish.take() {
            let _ = finish.send(());
        }
        drop(self.status);
        let grace = self.settings.timeout + std::time::Duration::from_secs(2);
        let stats = match tokio::time::timeout(grace, &mut self.pump).await {
            Ok(Ok(stats)) => stats,
            _ => {
                self.pump.abort();
                link::Stats::default()
            }
        };
        let _ = self.archive.log(&Interaction {
            timestamp: link::now_rfc3339(),
            initiator: "razar".to_owned(),
            action: "status_stream".to_owned(),
            response_summary: format!(
                "{} status message(s) sent, {} not sent while disconnected, {} dropped, {} reconnect(s)",
                stats.sent, stats.unsent, stats.dropped, stats.reconnects
            ),
        });
        stats
    }
}

/// What a reconnect's reply asks of the boot under way: a `skip` for each component under
/// downtime (with Crown's description as the reason), then its suggestions.
fn reconnect_advice(ack: &HandshakeAck) -> Vec<Suggestion> {
    let downtime = ack.downtime.iter().map(|(name, downtime)| {
        let mut reason = String::from("Crown downtime");
        if !downtime.description.trim().is_empty() {
            reason.push_str(": ");
            reason.push_str(downtime.description.trim());
        }
        Suggestion {
            action: "skip".to_owned(),
            component: Some(name.clone()),
            after: None,
            value: None,
            reason: Some(reason),
            extra: BTreeMap::new(),
        }
    });
    downtime.chain(ack.suggestions.iter().cloned()).collect()
}

/// Records what the link reports and passes suggestions on, until the boot finishes.
async fn pump(
    mut live: link::Live,
    archive: Archive,
    suggestions: tokio::sync::mpsc::Sender<Vec<Sourced>>,
    mut finished: tokio::sync::oneshot::Receiver<()>,
    timeout: std::time::Duration,
) -> link::Stats {
    let log = |initiator: &str, action: &str, summary: String, at: &str| {
        if let Err(err) = archive.log(&Interaction {
            timestamp: at.to_owned(),
            initiator: initiator.to_owned(),
            action: action.to_owned(),
            response_summary: summary,
        }) {
            tracing::warn!(target: "razar::crown", "cannot log a Crown exchange: {err}");
        }
    };
    loop {
        let notice = tokio::select! {
            notice = live.notice() => notice,
            _ = &mut finished => break,
        };
        let Some(notice) = notice else { break };
        match notice {
            link::Notice::Suggestions { at, items } => {
                let labels: Vec<String> = items.iter().map(Suggestion::label).collect();
                log(
                    "crown",
                    "suggestions",
                    format!("{} suggestion(s): {}", items.len(), labels.join(", ")),
                    &at,
                );
                let sourced = items
                    .into_iter()
                    .map(|suggestion| Sourced {
                        source: Source::Message { at: at.clone() },
                        suggestion,
                    })
                    .collect();
                if suggestions.try_send(sourced).is_err() {
                    tracing::warn!(target: "razar::crown", "mid-boot suggestions dropped: nobody reads them");
                }
            }
            link::Notice::RepairSuggestion { at, suggestion } => log(
                "crown",
                "repair_suggestion",
                format!(
                    "patch for `{}` ({} bytes) not applied automatically",
                    suggestion.component,
                    suggestion.patch.len()
                ),
                &at,
            ),
            link::Notice::Rejected { at, why } => log("crown", "rejected_frame", why, &at),
            link::Notice::Disconnected { at, why } => log("razar", "disconnected", why, &at),
            link::Notice::Reconnected {
                at,
                sent,
                raw,
                ack,
                attempts,
            } => {
                if let Err(err) =
                    archive.record_handshake(std::time::SystemTime::now(), &sent, &raw)
                {
                    tracing::warn!(target: "razar::crown", "cannot archive a handshake: {err}");
                }
                log(
                    "razar",
                    "handshake",
                    format!(
                        "reconnected ({attempts} attempt(s)): {}",
                        ack_summary(&ack, 0)
                    ),
                    &at,
                );
                // The reply counts like a mid-boot message: its downtime skips steps that have
                // not started, and its suggestions are judged against them.
                let sourced: Vec<Sourced> = reconnect_advice(&ack)
                    .into_iter()
                    .map(|suggestion| Sourced {
                        source: Source::Message { at: at.clone() },
                        suggestion,
                    })
                    .collect();
                if !sourced.is_empty() && suggestions.try_send(sourced).is_err() {
                    tracing::warn!(target: "razar::crown", "mid-boot suggestions dropped: nobody reads them");
                }
            }
        }
    }
    live.close(timeout).await
}

/// The steps of a run that are no longer pending (spawned, adopted, completed, skipped,
/// blocked …), as the executor reports them: what mid-boot suggestions may no longer move.
#[derive(Debug, Clone, Default)]
pub struct Started(std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>);

impl Started {
    pub fn snapshot(&self) -> BTreeSet<String> {
        self.0.lock().map(|set| set.clone()).unwrap_or_default()
    }
}

impl crate::exec::Sink for Started {
    fn emit(&mut self, event: &crate::exec::Event) {
        use crate::exec::EventKind;
        if let (Some(component), false) = (
            event.kind.component(),
            matches!(event.kind, EventKind::Probe { .. }),
        ) && let Ok(mut set) = self.0.lock()
        {
            set.insert(component.to_owned());
        }
    }
}

/// `razar apply`'s Crown side, prepared before the run: the consulted exchange and what the
/// run needs to keep the link.
pub struct RunCrown {
    settings: Settings,
    archive: Archive,
    exchange: Exchange,
    brief: Brief,
    graph: Graph,
    model_tasks: Vec<usize>,
    /// Advice for a saved plan, applied as a revision before anything starts.
    initial: Vec<Sourced>,
    fixed_parallelism: Option<usize>,
    /// Lines for the operator (online/offline, downtime, launches, notes).
    pub report: Vec<String>,
}

/// Settings for a configuration that has a `crown:` section; `None` without one. A
/// configured Crown without a URL is offline, unless required (a usage error).
pub fn settings_for(config: &Config) -> Result<Option<Settings>, Error> {
    let Some(crown) = config.crown.as_ref() else {
        return Ok(None);
    };
    match Settings::resolve(Some(crown), None) {
        Ok(settings) => Ok(Some(settings)),
        Err(link::SettingsError::NoUrl) if !crown.required => Ok(None),
        Err(err) => Err(Error::Usage(err.to_string())),
    }
}

/// Builds the plan for `razar apply`, consulting Crown first when the configuration has a
/// `crown:` section: its downtime, suggestions and missing models shape the plan.
pub async fn plan_for_run(
    graph: &Graph,
    selected: &BTreeSet<usize>,
    mut options: Options,
    status: &BTreeMap<String, String>,
    open_issues: Vec<OpenIssue>,
    on_handshake: &mut dyn FnMut(&Value),
) -> Result<(Plan, Option<RunCrown>), Error> {
    let Some(settings) = settings_for(graph.config())? else {
        return Ok((crate::plan::build(graph, selected, &options), None));
    };
    let archive = Archive::new(&graph.config().state_dir);
    let consulted = consult(
        graph,
        selected,
        &mut options,
        &settings,
        &archive,
        status,
        open_issues,
        "razar",
        on_handshake,
    )
    .await?;
    let mut plan = crate::plan::build(&consulted.graph, &consulted.selected, &options);
    explain_model_steps(&mut plan, &consulted.graph, &consulted.model_tasks);
    let report = consulted.report(&settings);
    Ok((
        plan,
        Some(RunCrown {
            settings,
            archive,
            exchange: consulted.exchange,
            brief: consulted.brief,
            graph: consulted.graph,
            model_tasks: consulted.model_tasks,
            initial: Vec::new(),
            fixed_parallelism: options.parallelism,
            report,
        }),
    ))
}

/// For a saved plan (run exactly as saved): consults Crown with a brief built from the plan,
/// and turns its downtime and suggestions into a revision adopted before anything starts.
/// Models Crown lacks cannot be added to a saved plan: the report says so.
pub async fn saved_plan_crown(
    plan: &Plan,
    config: &Config,
    status: &BTreeMap<String, String>,
    open_issues: Vec<OpenIssue>,
    fixed_parallelism: Option<usize>,
    on_handshake: &mut dyn FnMut(&Value),
) -> Result<Option<RunCrown>, Error> {
    let Some(settings) = settings_for(config)? else {
        return Ok(None);
    };
    let archive = Archive::new(&plan.state_dir);
    let brief = Brief {
        priority_map: plan
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.priority))
            .collect(),
        current_status: plan
            .steps
            .iter()
            .map(|s| {
                let state = status.get(&s.name).map_or("unknown", String::as_str);
                (s.name.clone(), state.to_owned())
            })
            .collect(),
        open_issues,
    };
    let exchange = handshake(&settings, &brief, &archive, "razar").await?;
    on_handshake(&exchange.record(&settings));
    let mut report = Vec::new();
    let mut initial = Vec::new();
    match &exchange.reached {
        Reached::Offline(failed) if settings.required => {
            return Err(Error::CrownUnavailable(format!(
                "Crown is required (`crown.required: true`) but {}; nothing was started",
                failed.summary().trim_start_matches("Crown ")
            )));
        }
        Reached::Offline(failed) => report.push(format!(
            "crown: offline — {}; continuing without Crown",
            failed.summary()
        )),
        Reached::Online(c) => {
            report.push(format!(
                "crown: online at {} ({})",
                settings.display_url(),
                ack_summary(&c.ack, c.early_suggestions.len())
            ));
            let advice = advise(config, &c.ack, &c.early_suggestions, &c.at);
            for (name, reason) in &advice.downtime {
                initial.push(Sourced {
                    source: Source::Handshake { at: c.at.clone() },
                    suggestion: Suggestion {
                        action: "skip".to_owned(),
                        component: Some(name.clone()),
                        after: None,
                        value: None,
                        reason: Some(reason.clone()),
                        extra: BTreeMap::new(),
                    },
                });
            }
            initial.extend(advice.suggestions);
            for &m in &advice.missing_models {
                if let Some(model) = config.crown.as_ref().and_then(|c| c.models.get(m)) {
                    report.push(format!(
                        "crown: Crown lacks `{}`, but a saved plan runs as saved: no launch (plan again to include it)",
                        model.capability
                    ));
                }
            }
            report.extend(advice.notes.iter().map(|n| format!("crown: {n}")));
        }
    }
    let graph = graph::compile(config.clone()).map_err(Error::Invalid)?;
    Ok(Some(RunCrown {
        settings,
        archive,
        exchange,
        brief,
        graph,
        model_tasks: Vec::new(),
        initial,
        fixed_parallelism,
        report,
    }))
}

/// Crown's part of a running boot: the link, the sinks, and the revisions for the executor.
pub struct Running {
    boot: Boot,
    sinks: Vec<Box<dyn crate::exec::Sink>>,
    revisions: Option<tokio::sync::mpsc::Receiver<crate::exec::Revision>>,
    forward: tokio::task::JoinHandle<()>,
}

impl RunCrown {
    /// Adopts the advice for a saved plan (downtime, handshake suggestions) into `plan`
    /// itself, before anything starts; each outcome is logged and recorded in the plan.
    pub fn adopt_initial(&mut self, plan: &mut Plan) {
        let initial = std::mem::take(&mut self.initial);
        if initial.is_empty() {
            return;
        }
        let revision =
            crate::plan::suggest::revise(plan, &BTreeSet::new(), &initial, self.fixed_parallelism);
        log_outcomes(&self.archive, &revision.outcomes);
        revision.apply(plan);
    }

    /// Starts the link for the run of `plan` (inside the runtime the run uses). `on_launch`
    /// gets each model launch outcome, `on_judged` each batch of judged mid-boot suggestions
    /// (e.g. to record them in the state store).
    pub fn start(
        self,
        plan: &Plan,
        on_launch: Option<crate::state::crown::LaunchHook>,
        on_judged: Option<JudgedHook>,
    ) -> Running {
        let mut boot = Boot::start(
            self.settings,
            self.archive.clone(),
            self.exchange,
            self.brief,
        );
        let started = Started::default();
        let mut sinks = boot.sinks(&self.graph, &self.model_tasks, on_launch);
        sinks.insert(0, Box::new(started.clone()));
        let (tx, revisions) = tokio::sync::mpsc::channel(16);
        let suggestions = boot
            .suggestions()
            .expect("a new boot has its suggestions channel");
        let initial = self.initial;
        let forward = tokio::spawn({
            let plan = plan.clone();
            let archive = self.archive;
            let fixed = self.fixed_parallelism;
            async move {
                forward_revisions(
                    plan,
                    started,
                    initial,
                    suggestions,
                    tx,
                    archive,
                    fixed,
                    on_judged,
                )
                .await;
            }
        });
        Running {
            boot,
            sinks,
            revisions: Some(revisions),
            forward,
        }
    }
}

impl Running {
    /// The sinks to add to the run's fan-out, after the state store and before the reporter
    /// (taken once).
    pub fn sinks(&mut self) -> Vec<Box<dyn crate::exec::Sink>> {
        std::mem::take(&mut self.sinks)
    }

    /// The revisions for `exec::Options::revisions` (taken once).
    pub fn revisions(&mut self) -> Option<tokio::sync::mpsc::Receiver<crate::exec::Revision>> {
        self.revisions.take()
    }

    /// Ends the link once the run has ended (its sinks dropped).
    pub async fn finish(self) -> link::Stats {
        let stats = self.boot.finish().await;
        self.forward.abort();
        stats
    }
}

/// Called with the outcomes of each batch of suggestions judged during a boot.
pub type JudgedHook = Box<dyn FnMut(&[crate::plan::suggest::Outcome]) + Send>;

/// Judges each batch of mid-boot suggestions against the steps not yet `started` and sends
/// the resulting revision to the executor; logs every outcome in `interaction_log.jsonl` and
/// hands it to `on_judged`.
/// `initial` (advice for a saved plan) goes first. Ends when the suggestions channel closes
/// (the boot ended) or the executor stops reading.
#[expect(
    clippy::too_many_arguments,
    reason = "the run's channels, archive and hook, each handed over once by `RunCrown::start`"
)]
pub async fn forward_revisions(
    mut plan: Plan,
    started: Started,
    initial: Vec<Sourced>,
    mut suggestions: tokio::sync::mpsc::Receiver<Vec<Sourced>>,
    revisions: tokio::sync::mpsc::Sender<crate::exec::Revision>,
    archive: Archive,
    fixed_parallelism: Option<usize>,
    mut on_judged: Option<JudgedHook>,
) {
    let mut pending = (!initial.is_empty()).then_some(initial);
    loop {
        let items = match pending.take() {
            Some(items) => items,
            None => match suggestions.recv().await {
                Some(items) => items,
                None => break,
            },
        };
        let revision =
            crate::plan::suggest::revise(&plan, &started.snapshot(), &items, fixed_parallelism);
        log_outcomes(&archive, &revision.outcomes);
        if let Some(hook) = on_judged.as_mut() {
            hook(&revision.outcomes);
        }
        // Later suggestions are judged against the plan as revised so far.
        revision.apply(&mut plan);
        if !revision.is_empty() && revisions.send(for_executor(revision)).await.is_err() {
            break;
        }
    }
}

/// One `suggestion` line per outcome in `interaction_log.jsonl`.
fn log_outcomes(archive: &Archive, outcomes: &[crate::plan::suggest::Outcome]) {
    for outcome in outcomes {
        let verdict = if outcome.applied {
            "applied"
        } else {
            "rejected"
        };
        let _ = archive.log(&Interaction {
            timestamp: link::now_rfc3339(),
            initiator: "razar".to_owned(),
            action: "suggestion".to_owned(),
            response_summary: format!(
                "{verdict}: {} — {} ({})",
                outcome.suggestion.label(),
                outcome.effect,
                outcome.source
            ),
        });
    }
}

/// What the executor adopts of a judged revision (priorities are folded into the order).
fn for_executor(revision: crate::plan::suggest::Revision) -> crate::exec::Revision {
    crate::exec::Revision {
        order: revision.order,
        depends_on: revision.depends_on,
        skip: revision.skip,
        parallelism: revision.parallelism,
    }
}

fn model_of<'a>(graph: &'a Graph, component: &Component) -> Option<&'a config::Model> {
    let crown = graph.config().crown.as_ref()?;
    component
        .origin
        .pointer
        .as_deref()
        .and_then(|p| p.strip_prefix("/crown/models/"))
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| crown.models.get(m))
}

/// Adds the Crown reason to each model launch step of a built plan.
pub fn explain_model_steps(plan: &mut Plan, graph: &Graph, tasks: &[usize]) {
    for &i in tasks {
        let component = &graph.components()[i];
        let Some(model) = model_of(graph, component) else {
            continue;
        };
        if let Some(step) = plan.steps.iter_mut().find(|s| s.name == component.name) {
            step.reasons.insert(
                0,
                Reason {
                    kind: ReasonKind::Crown,
                    text: format!(
                        "Crown does not advertise `{}`: its launch runs first",
                        model.capability
                    ),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(yaml: &str) -> (tempfile::TempDir, Graph) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("razar.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let graph = graph::load(&[path]).expect("valid config");
        (dir, graph)
    }

    const STACK: &str = "
version: 1
crown:
  url: ws://127.0.0.1:1/crown
  models:
    - {capability: GLM4V, aliases: [GLM-4.1V], launch: [sh, launch.sh]}
    - {capability: Whisper, launch: [sh, whisper.sh]}
components:
  - {name: vision_adapter, command: [vision]}
  - {name: api, command: [api], depends_on: [vision_adapter], priority: -3}
";

    #[test]
    fn downtime_matches_names_loosely_and_notes_strangers() {
        let (_dir, g) = graph(STACK);
        let ack: HandshakeAck = serde_json::from_value(json!({
            "ack": "ok",
            "capabilities": ["glm-4.1v"],
            "downtime": {"Vision Adapter": {"description": "driver upgrade", "until": "noon"}, "ghost": "x"}
        }))
        .unwrap();
        let advice = advise(g.config(), &ack, &[], "t");
        assert_eq!(
            advice.downtime["vision_adapter"],
            "Crown downtime: driver upgrade (until noon)"
        );
        assert!(advice.notes[0].contains("`ghost`"));
        // GLM4V is advertised under an alias spelling; Whisper is not.
        assert_eq!(advice.missing_models, vec![1]);
    }

    #[test]
    fn model_launch_tasks_run_first_and_block_nothing() {
        let (_dir, g) = graph(STACK);
        let (g2, added) = with_model_launches(&g, &[0, 1]);
        assert_eq!(added, vec![2, 3]);
        let selected: BTreeSet<usize> = (0..g2.len()).collect();
        let mut plan = crate::plan::build(&g2, &selected, &Options::default());
        explain_model_steps(&mut plan, &g2, &added);
        assert_eq!(plan.steps[0].name, "crown-model.GLM4V");
        assert_eq!(plan.steps[1].name, "crown-model.Whisper");
        assert!(
            plan.steps[0].reasons[0]
                .text
                .contains("does not advertise `GLM4V`")
        );
        assert_eq!(plan.steps[0].kind, Kind::Task);
        assert!(plan.steps.iter().all(|s| {
            s.depends_on
                .iter()
                .all(|d| !d.name.starts_with(MODEL_PREFIX))
        }));
    }

    #[tokio::test]
    async fn a_boot_streams_status_passes_on_suggestions_and_records_launches() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/crown", listener.local_addr().unwrap());
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Value>();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            while let Some(Ok(Message::Text(text))) = ws.next().await {
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                let reply = match value["type"].as_str() {
                    Some("handshake") => Some(json!({"type": "handshake_ack", "ack": "ok"})),
                    Some("status") if value["state"] == "starting" => Some(json!(
                        {"type": "suggestions", "items": [{"action": "defer", "component": "api"}]}
                    )),
                    _ => None,
                };
                let _ = seen_tx.send(value);
                if let Some(reply) = reply {
                    ws.send(Message::text(reply.to_string())).await.unwrap();
                }
            }
        });
        let yaml = STACK.replace("ws://127.0.0.1:1/crown", &url);
        let (dir, g) = graph(&yaml);
        let state = dir.path().join("state");
        let archive = Archive::new(&state);
        let settings = Settings::resolve(g.config().crown.as_ref(), None).unwrap();
        let selected: BTreeSet<usize> = (0..g.len()).collect();
        let mut options = Options::default();
        let consulted = consult(
            &g,
            &selected,
            &mut options,
            &settings,
            &archive,
            &BTreeMap::new(),
            vec![],
            "razar",
            &mut |_| {},
        )
        .await
        .expect("Crown answers");
        assert_eq!(
            consulted.model_tasks.len(),
            2,
            "neither model is advertised"
        );
        let mut boot = Boot::start(
            settings,
            archive.clone(),
            consulted.exchange,
            consulted.brief,
        );
        let launched = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen_launch = launched.clone();
        let mut sinks = boot.sinks(
            &consulted.graph,
            &consulted.model_tasks,
            Some(Box::new(move |r| {
                seen_launch.lock().unwrap().push(r.model.clone())
            })),
        );
        let mut suggestions = boot.suggestions().expect("first call");
        let event = |kind| crate::exec::Event {
            at_ms: 0,
            time: link::now_rfc3339(),
            kind,
        };
        for sink in &mut sinks {
            sink.emit(&event(crate::exec::EventKind::Spawned {
                component: "api".to_owned(),
                attempt: 1,
                pid: 1,
                pgid: 1,
                start_time: 1,
            }));
            sink.emit(&event(crate::exec::EventKind::Completed {
                component: "crown-model.GLM4V".to_owned(),
                attempt: 1,
                after_ms: 40,
            }));
        }
        let items = tokio::time::timeout(std::time::Duration::from_secs(10), suggestions.recv())
            .await
            .expect("the mid-boot suggestion arrives")
            .expect("channel open");
        assert_eq!(items[0].suggestion.action, "defer");
        assert!(matches!(items[0].source, Source::Message { .. }));
        drop(sinks);
        assert_eq!(*launched.lock().unwrap(), ["GLM4V"]);
        let stats = boot.finish().await;
        assert_eq!(stats.sent, 2, "{stats:?}");
        let mut types = Vec::new();
        while let Ok(value) = seen.try_recv() {
            types.push(format!(
                "{}:{}",
                value["type"].as_str().unwrap(),
                value["state"].as_str().unwrap_or("")
            ));
        }
        assert_eq!(types, ["handshake:", "status:starting", "status:completed"]);
        let actions: Vec<String> = archive
            .interactions()
            .into_iter()
            .map(|i| i.action)
            .collect();
        assert_eq!(
            actions,
            ["handshake", "model_launch", "suggestions", "status_stream"]
        );
        assert!(archive.briefs_dir().read_dir().unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with("_GLM4V_launch.json")
        }));
    }

    #[tokio::test]
    async fn mid_boot_suggestions_become_revisions_and_are_logged() {
        use crate::exec::Sink as _;
        let (dir, g) = graph(STACK);
        let selected: BTreeSet<usize> = (0..g.len()).collect();
        let plan = crate::plan::build(&g, &selected, &Options::default());
        let archive = Archive::new(&dir.path().join("state"));
        let mut started = Started::default();
        started.emit(&crate::exec::Event {
            at_ms: 0,
            time: "t".to_owned(),
            kind: crate::exec::EventKind::Spawned {
                component: "vision_adapter".to_owned(),
                attempt: 1,
                pid: 1,
                pgid: 1,
                start_time: 1,
            },
        });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (rev_tx, mut rev_rx) = tokio::sync::mpsc::channel(4);
        let judged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = judged.clone();
        let task = tokio::spawn(forward_revisions(
            plan,
            started,
            Vec::new(),
            rx,
            rev_tx,
            archive.clone(),
            None,
            Some(Box::new(
                move |outcomes: &[crate::plan::suggest::Outcome]| {
                    seen.lock().unwrap().extend(
                        outcomes
                            .iter()
                            .map(|o| (o.suggestion.label(), o.applied, o.source.clone())),
                    );
                },
            )),
        ));
        let item = |action: &str, component: &str| Sourced {
            source: Source::Message { at: "t".to_owned() },
            suggestion: serde_json::from_value(json!({"action": action, "component": component}))
                .unwrap(),
        };
        tx.send(vec![item("skip", "api"), item("defer", "vision_adapter")])
            .await
            .unwrap();
        drop(tx);
        let revision = rev_rx.recv().await.expect("a revision");
        assert_eq!(revision.skip.keys().collect::<Vec<_>>(), ["api"]);
        task.await.unwrap();
        let log: Vec<String> = archive
            .interactions()
            .into_iter()
            .map(|i| i.response_summary)
            .collect();
        assert!(log[0].starts_with("applied: skip api"), "{log:?}");
        assert!(log[1].contains("has already started"), "{log:?}");
        let message = Source::Message { at: "t".to_owned() };
        assert_eq!(
            *judged.lock().unwrap(),
            [
                ("skip api".to_owned(), true, message.clone()),
                ("defer vision_adapter".to_owned(), false, message),
            ],
            "every judged suggestion reaches the hook with its verdict and provenance"
        );
    }

    #[test]
    fn brief_lists_priorities_status_and_issues() {
        let (_dir, g) = graph(STACK);
        let selected: BTreeSet<usize> = (0..g.len()).collect();
        let status = BTreeMap::from([("api".to_owned(), "ready".to_owned())]);
        let b = brief(&g, &selected, &status, vec![]);
        assert_eq!(b.priority_map["api"], -3);
        assert_eq!(b.current_status["api"], "ready");
        assert_eq!(b.current_status["vision_adapter"], "unknown");
    }
}
