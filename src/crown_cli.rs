//! The binary's Crown commands: `razar crown handshake` and the Crown side of `razar plan`
//! (`--crown`, `--suggestions`, `--offline`). Argument handling and printing only: the work
//! is in `razar::crown::session`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;

use razar::Error;
use razar::crown::link::Settings;
use razar::crown::session::{self, Reached};
use razar::graph::Graph;
use razar::plan::{self, Options, Plan, suggest};
use razar::state::crown::Archive;

/// How `razar plan` involves Crown.
pub struct PlanCrown {
    pub suggestions: Option<PathBuf>,
    pub url: Option<String>,
    pub offline: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Usage(format!("cannot start the async runtime: {err}")))
}

/// Builds the plan, first merging a suggestions file and, when Crown is configured (or
/// `--crown` given) and not `--offline`, what Crown answers to the brief.
pub fn plan(
    graph: &Graph,
    selected: &BTreeSet<usize>,
    mut options: Options,
    crown: PlanCrown,
    known: &razar::state::View,
) -> Result<Plan, Error> {
    if let Some(path) = &crown.suggestions {
        options.suggestions.extend(suggest::load_file(path)?);
    }
    let config_crown = graph.config().crown.as_ref();
    let offline_plan = |options: &Options| {
        print_latest(known);
        plan::build(graph, selected, options)
    };
    if crown.offline || (crown.url.is_none() && config_crown.is_none()) {
        return Ok(offline_plan(&options));
    }
    let settings = match Settings::resolve(config_crown, crown.url.as_deref()) {
        Ok(settings) => settings,
        Err(razar::crown::link::SettingsError::NoUrl)
            if !config_crown.is_some_and(|c| c.required) =>
        {
            eprintln!(
                "crown: no URL (set `crown.url` or CROWN_WS_URL, or pass --crown URL); planning offline"
            );
            return Ok(offline_plan(&options));
        }
        Err(err) => return Err(Error::Usage(err.to_string())),
    };
    let archive = Archive::new(&graph.config().state_dir);
    let (status, open_issues) = session::known(known);
    // One runtime for the whole exchange: the connection is bound to it until closed.
    let rt = runtime()?;
    let consulted = rt.block_on(async {
        let consulted = session::consult(
            graph,
            selected,
            &mut options,
            &settings,
            &archive,
            &status,
            open_issues,
            "operator",
            // `plan` only reads the state: the exchange is archived, not recorded.
            &mut |_| {},
        )
        .await?;
        Ok::<_, Error>(consulted)
    })?;
    for line in consulted.report(&settings) {
        eprintln!("{line}");
    }
    let mut plan = plan::build(&consulted.graph, &consulted.selected, &options);
    session::explain_model_steps(&mut plan, &consulted.graph, &consulted.model_tasks);
    if let Reached::Online(connected) = consulted.exchange.reached {
        rt.block_on(connected.close());
    }
    Ok(plan)
}

/// Judged suggestions listed by an offline `razar plan` (the latest ones the state keeps).
const LATEST_SHOWN: usize = 10;

/// Lists the latest Crown suggestions the state recorded — from a handshake, a mid-boot
/// message or a suggestions file — with their verdict, on stderr. They are not applied to
/// the plan being built (Crown is not consulted; `--suggestions FILE` feeds them back).
fn print_latest(known: &razar::state::View) {
    if !known.suggestions.is_empty() {
        let skipped = known.suggestions.len().saturating_sub(LATEST_SHOWN);
        eprintln!(
            "crown: latest suggestions recorded in the state (not applied to this plan){}:",
            if skipped > 0 {
                format!(", {skipped} older not shown")
            } else {
                String::new()
            }
        );
        for record in &known.suggestions[skipped..] {
            let outcome = &record.outcome;
            let via = match &outcome.source {
                suggest::Source::Handshake { .. } => "handshake",
                suggest::Source::Message { .. } => "mid-boot",
                suggest::Source::File { .. } => "file",
            };
            let verdict = if outcome.applied {
                "applied"
            } else {
                "rejected"
            };
            let reason = outcome
                .suggestion
                .reason
                .as_deref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default();
            eprintln!(
                "  {via:<9} {verdict:<8} {}{reason}: {} ({})",
                outcome.suggestion.label(),
                outcome.effect,
                outcome.source
            );
        }
    } else if let Some((at, items)) = session::latest_suggestions(known) {
        // A handshake recorded by `razar crown handshake`: its suggestions were never judged.
        let labels: Vec<String> = items.iter().map(suggest::Suggestion::label).collect();
        eprintln!(
            "crown: latest suggestions (handshake at {at}), not applied to this plan: {}",
            labels.join(", ")
        );
    }
}

/// `razar crown handshake [BRIEF.json]`.
pub fn handshake(
    brief: Option<PathBuf>,
    graph: Option<Graph>,
    url: Option<String>,
    state_dir: Option<PathBuf>,
    json: bool,
) -> Result<(), Error> {
    let config = graph.as_ref().map(Graph::config);
    let settings = Settings::resolve(config.and_then(|c| c.crown.as_ref()), url.as_deref())
        .map_err(|err| Error::Usage(err.to_string()))?;
    let brief = match (&brief, &graph) {
        (Some(path), _) => session::load_brief(path)?,
        (None, Some(graph)) => {
            let selected: BTreeSet<usize> = (0..graph.len()).collect();
            let known = razar::state::read(&graph.config().state_dir)?;
            let (status, open_issues) = session::known(&known);
            session::brief(graph, &selected, &status, open_issues)
        }
        (None, None) => {
            return Err(Error::Usage(
                "no brief: pass BRIEF.json, or a config (-c FILE) to build one from".to_owned(),
            ));
        }
    };
    let state_dir = state_dir
        .or_else(|| config.map(|c| c.state_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(".razar"));
    let archive = Archive::new(&state_dir);
    let rt = runtime()?;
    let exchange = rt.block_on(session::handshake(&settings, &brief, &archive, "operator"))?;
    // The state keeps the latest handshake; an apply holding the state directory records
    // its own, so a busy store is only noted.
    let stored = match razar::state::Store::open(&state_dir) {
        Ok(store) => store
            .record_handshake(&exchange.record(&settings))
            .and_then(|()| store.sync()),
        Err(err) => Err(err),
    };
    if let Err(err) = stored {
        eprintln!("note: the handshake is archived but not recorded in the state: {err}");
    }
    let mut out = std::io::stdout().lock();
    if json {
        let mut record = serde_json::to_string_pretty(&exchange.record(&settings))
            .expect("handshake records serialise");
        record.push('\n');
        let _ = out.write_all(record.as_bytes());
    } else {
        let _ = out.write_all(render(&exchange, &settings, graph.as_ref(), &archive).as_bytes());
    }
    match exchange.reached {
        Reached::Online(connected) => {
            rt.block_on(connected.close());
            Ok(())
        }
        Reached::Offline(failed) => Err(Error::CrownUnavailable(failed.summary())),
    }
}

fn render(
    exchange: &session::Exchange,
    settings: &Settings,
    graph: Option<&Graph>,
    archive: &Archive,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if let Some(var) = &settings.token_missing {
        let _ = writeln!(out, "note: `{var}` is not set: connected without a token");
    }
    match &exchange.reached {
        Reached::Online(c) => {
            let _ = writeln!(
                out,
                "crown: {} answered in {} ({} attempt(s))",
                settings.display_url(),
                razar::duration::display(c.elapsed),
                c.attempts
            );
            let _ = writeln!(
                out,
                "ack: {}{}",
                c.ack.ack,
                c.ack
                    .protocol
                    .map(|p| format!(" (protocol {p})"))
                    .unwrap_or_default()
            );
            let caps = if c.ack.capabilities.is_empty() {
                "none".to_owned()
            } else {
                c.ack.capabilities.join(", ")
            };
            let _ = writeln!(out, "capabilities: {caps}");
            if c.ack.downtime.is_empty() {
                let _ = writeln!(out, "downtime: none");
            }
            for (name, downtime) in &c.ack.downtime {
                let _ = write!(out, "downtime: {name}");
                if !downtime.description.is_empty() {
                    let _ = write!(out, " — {}", downtime.description);
                }
                if let Some(until) = &downtime.until {
                    let _ = write!(out, " (until {until})");
                }
                out.push('\n');
            }
            let suggestions: Vec<_> = c
                .ack
                .suggestions
                .iter()
                .chain(&c.early_suggestions)
                .collect();
            if suggestions.is_empty() {
                let _ = writeln!(out, "suggestions: none");
            }
            for s in suggestions {
                let _ = writeln!(
                    out,
                    "suggestion: {}{}",
                    s.label(),
                    s.reason
                        .as_deref()
                        .map(|r| format!(" — {r}"))
                        .unwrap_or_default()
                );
            }
            if let Some(graph) = graph {
                let advice = session::advise(graph.config(), &c.ack, &c.early_suggestions, &c.at);
                let models = graph
                    .config()
                    .crown
                    .as_ref()
                    .map(|crown| crown.models.as_slice())
                    .unwrap_or_default();
                for (i, model) in models.iter().enumerate() {
                    let verdict = if advice.missing_models.contains(&i) {
                        "not advertised: `razar apply` launches it before the boot"
                    } else {
                        "advertised"
                    };
                    let _ = writeln!(out, "model {}: {verdict}", model.capability);
                }
                for note in &advice.notes {
                    let _ = writeln!(out, "note: {note}");
                }
            }
            for why in &c.rejected {
                let _ = writeln!(out, "skipped frame: {why}");
            }
        }
        Reached::Offline(f) => {
            let _ = writeln!(out, "crown: {}", f.summary());
            for error in &f.errors {
                let _ = writeln!(out, "  {error}");
            }
        }
    }
    let dir = archive.briefs_dir();
    let _ = writeln!(
        out,
        "archived: {} and {}",
        dir.join(format!("{}.json", exchange.stamp)).display(),
        dir.join(format!("{}_response.json", exchange.stamp))
            .display()
    );
    out
}
