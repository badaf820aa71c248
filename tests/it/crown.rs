//! The Crown link through the real binary, against a real WebSocket server on port 0 that
//! plays Crown (tokio-tungstenite), and against a Python `websockets` Crown (tests/peers/).
//! Every fault the protocol names is played: unreachable, silent, invalid JSON, a frame over
//! 1 MiB, a close mid-handshake, unknown message types. razar must neither crash nor wait
//! past its timeout, and the token must appear in no file it writes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const TOKEN: &str = "tok-7f3a9c1e-not-for-files";
const TOKEN_VAR: &str = "RAZAR_TEST_CROWN_TOKEN";

/// What the fake Crown does on a connection once the handshake message has arrived.
#[derive(Debug, Clone)]
enum Act {
    Send(String),
    /// A text frame of 2 MiB.
    SendHuge,
    Close,
}

#[derive(Debug, Default)]
struct Seen {
    connections: usize,
    authorization: Vec<Option<String>>,
    messages: Vec<Value>,
}

/// A Crown on 127.0.0.1:<port 0>. Connection n follows `scripts[n]` (the last script
/// repeats); a connection whose script ends without `Close` stays open, reading.
struct FakeCrown {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeCrown {
    fn start(scripts: Vec<Vec<Act>>) -> FakeCrown {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("bound").port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let mut tasks = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let n = {
                                let mut seen = shared.lock().unwrap();
                                seen.connections += 1;
                                seen.connections - 1
                            };
                            let script = scripts[n.min(scripts.len() - 1)].clone();
                            tasks.spawn(serve(stream, script, shared.clone()));
                        }
                        _ = &mut stopped => break,
                    }
                }
                tasks.abort_all();
            });
        });
        FakeCrown {
            port,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/crown", self.port)
    }

    fn messages(&self) -> Vec<Value> {
        self.seen.lock().unwrap().messages.clone()
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }

    fn authorization(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().authorization.clone()
    }
}

impl Drop for FakeCrown {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(stream: tokio::net::TcpStream, script: Vec<Act>, seen: Arc<Mutex<Seen>>) {
    let auth = Arc::new(Mutex::new(None));
    let header = auth.clone();
    #[expect(
        clippy::result_large_err,
        reason = "the callback's signature is tungstenite's"
    )]
    let callback = move |request: &Request, response: Response| {
        *header.lock().unwrap() = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    seen.lock()
        .unwrap()
        .authorization
        .push(auth.lock().unwrap().clone());
    let record = |frame: &Message| {
        if let Message::Text(text) = frame
            && let Ok(value) = serde_json::from_str::<Value>(text.as_str())
        {
            seen.lock().unwrap().messages.push(value);
        }
    };
    match ws.next().await {
        Some(Ok(frame)) => record(&frame),
        _ => return,
    }
    for act in script {
        let sent = match act {
            Act::Send(text) => ws.send(Message::text(text)).await,
            Act::SendHuge => {
                let huge = format!(
                    r#"{{"type":"suggestions","items":[],"pad":"{}"}}"#,
                    "x".repeat(2 << 20)
                );
                ws.send(Message::text(huge)).await
            }
            Act::Close => {
                let _ = ws.close(None).await;
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
    while let Some(Ok(frame)) = ws.next().await {
        record(&frame);
    }
}

fn ack(extra: Value) -> String {
    let mut reply = json!({"type": "handshake_ack", "ack": "ok", "capabilities": [], "downtime": {}, "suggestions": []});
    if let (Value::Object(reply), Value::Object(extra)) = (&mut reply, extra) {
        reply.extend(extra);
    }
    reply.to_string()
}

/// A stack of four components: api depends on db and cache; worker on api.
fn write_config(dir: &Path, crown: &str) -> PathBuf {
    let path = dir.join("razar.yaml");
    let text = format!(
        "version: 1
state_dir: state
parallelism: 2
{crown}
components:
  - {{name: db, command: [sleep, '30']}}
  - {{name: cache, command: [sleep, '30']}}
  - {{name: api, command: [sleep, '30'], depends_on: [db, cache]}}
  - {{name: worker, command: [sleep, '30'], depends_on: [api]}}
"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn crown_section(url: &str, timeout: &str, required: bool) -> String {
    format!(
        "crown:
  url: {url}
  token_env: {TOKEN_VAR}
  timeout: {timeout}
  retries: 2
  required: {required}
  models:
    - {{capability: GLM4V, aliases: ['GLM-4.1V'], launch: [sh, -c, 'echo launched']}}"
    )
}

fn razar(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("razar").expect("razar binary");
    cmd.current_dir(dir)
        .env_remove("CROWN_WS_URL")
        .env_remove("RAZAR_LOG")
        .env(TOKEN_VAR, TOKEN)
        .timeout(Duration::from_secs(60));
    cmd
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn run(cmd: &mut Command) -> Ran {
    let started = Instant::now();
    let output = cmd.output().expect("razar runs");
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Every file under `dir`, with its contents.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn assert_token_absent(dir: &Path, outputs: &[&Ran]) {
    let written = files(dir);
    assert!(
        !written.is_empty(),
        "razar wrote nothing under {}",
        dir.display()
    );
    for (path, bytes) in written {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(TOKEN),
            "the token leaked into {}",
            path.display()
        );
    }
    for ran in outputs {
        assert!(!ran.stdout.contains(TOKEN) && !ran.stderr.contains(TOKEN));
    }
}

fn plan_json(ran: &Ran) -> Value {
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    serde_json::from_str(&ran.stdout).expect("plan JSON")
}

fn step<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step `{name}` in {plan:#}"))
}

fn step_names(plan: &Value) -> Vec<String> {
    plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

fn briefs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("state/mission_briefs"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn interactions(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("state/interaction_log.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("interaction lines are JSON"))
        .collect()
}

#[test]
fn handshake_sends_brief_and_token_prints_reply_and_archives_the_pair() {
    let crown = FakeCrown::start(vec![vec![Act::Send(ack(json!({
        "capabilities": ["glm-4.1v"],
        "downtime": {"cache": {"description": "memory swap"}},
        "suggestions": [{"action": "prioritize", "component": "cache", "reason": "warm it first"}]
    })))]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crown_section(&crown.url(), "5s", false));
    // The most verbose logging must not reveal the token either.
    let ran = run(razar(dir.path())
        .env("RAZAR_LOG", "trace")
        .args(["crown", "handshake", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stderr.contains("TRACE"), "trace logging was on");
    assert!(
        ran.stdout.contains("capabilities: glm-4.1v"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("downtime: cache — memory swap"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("suggestion: prioritize cache — warm it first")
    );
    assert!(
        ran.stdout.contains("model GLM4V: advertised"),
        "{}",
        ran.stdout
    );

    assert_eq!(crown.authorization(), vec![Some(format!("Bearer {TOKEN}"))]);
    let sent = &crown.messages()[0];
    assert_eq!(sent["type"], "handshake");
    assert_eq!(sent["protocol"], 1);
    assert_eq!(sent["brief"]["priority_map"]["worker"], 0);
    assert_eq!(sent["brief"]["current_status"]["api"], "unknown");

    let names = briefs(dir.path());
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[1].ends_with("_response.json"));
    let archived: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("state/mission_briefs").join(&names[0])).unwrap(),
    )
    .unwrap();
    assert_eq!(&archived, sent);
    let log = interactions(dir.path());
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["initiator"], "operator");
    assert_eq!(log[0]["action"], "handshake");
    assert!(
        log[0]["response_summary"]
            .as_str()
            .unwrap()
            .contains("downtime cache")
    );
    assert!(log[0]["timestamp"].as_str().unwrap().ends_with('Z'));

    // The state keeps the reply under `handshake` (and in sled), and a plan that does not
    // consult Crown lists its latest suggestions.
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/razar_state.json")).unwrap())
            .expect("razar_state.json");
    assert_eq!(state["handshake"]["acknowledgement"], "ok", "{state:#}");
    assert_eq!(state["capabilities"], json!(["glm-4.1v"]));
    assert!(state["downtime"]["cache"].is_object());
    let offline = run(razar(dir.path())
        .args(["plan", "--offline", "-c"])
        .arg(&config));
    assert_eq!(offline.code, Some(0), "{}", offline.stderr);
    assert!(
        offline
            .stderr
            .contains("crown: latest suggestions (handshake at "),
        "{}",
        offline.stderr
    );
    assert!(
        offline.stderr.contains("prioritize cache"),
        "{}",
        offline.stderr
    );
    assert_token_absent(dir.path(), &[&ran, &offline]);
}

#[test]
fn a_brief_file_in_abzu_shape_is_sent_as_is() {
    let crown = FakeCrown::start(vec![vec![Act::Send(
        r#"{"ack":"ok","capabilities":["GLM4V"],"downtime":{}}"#.to_owned(),
    )]]);
    let dir = tempfile::tempdir().unwrap();
    let brief = dir.path().join("brief.json");
    std::fs::write(
        &brief,
        r#"{"priority_map": {"signal": 2, "intel": 3}, "current_status": {"signal": "ready", "intel": "pending"},
           "open_issues": [{"id": "missing_feed", "detail": "awaiting reconnaissance data"}]}"#,
    )
    .unwrap();
    let ran = run(razar(dir.path()).args([
        "crown",
        "handshake",
        "brief.json",
        "--url",
        &crown.url(),
        "--state-dir",
        "state",
        "--json",
    ]));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let record: Value = serde_json::from_str(&ran.stdout).expect("--json prints the record");
    assert_eq!(record["outcome"], "ok");
    assert_eq!(record["capabilities"], json!(["GLM4V"]));
    let sent = &crown.messages()[0]["brief"];
    assert_eq!(sent["open_issues"][0]["id"], "missing_feed");
    assert_eq!(sent["priority_map"]["intel"], 3);
    // No token variable configured: no Authorization header at all.
    assert_eq!(crown.authorization(), vec![None]);

    std::fs::write(&brief, "{\"priority_map\": {\"a\": \"high\"}}").unwrap();
    let ran =
        run(razar(dir.path()).args(["crown", "handshake", "brief.json", "--url", &crown.url()]));
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("brief.json:1:"), "{}", ran.stderr);

    // A misspelt key would send an empty brief: refused, naming it.
    let before = crown.connections();
    std::fs::write(&brief, r#"{"priorty_map": {"api": 1}}"#).unwrap();
    let ran =
        run(razar(dir.path()).args(["crown", "handshake", "brief.json", "--url", &crown.url()]));
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("`priorty_map` (did you mean `priority_map`?)"),
        "{}",
        ran.stderr
    );
    assert_eq!(crown.connections(), before, "nothing sent");
}

#[test]
fn plan_applies_downtime_suggestions_and_model_launches_with_provenance() {
    let crown = FakeCrown::start(vec![vec![Act::Send(ack(json!({
        "capabilities": ["whisper"],
        "downtime": {"cache": {"description": "memory swap"}},
        "suggestions": [
            {"action": "prioritize", "component": "db", "reason": "slowest to warm"},
            {"action": "after", "component": "db", "after": "worker", "reason": "loop"},
            {"action": "add_component", "component": "miner", "command": "xmrig"},
            {"action": "skip", "component": "nosuch"}
        ]
    })))]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crown_section(&crown.url(), "5s", false));
    let ran = run(razar(dir.path())
        .args(["plan", "--format", "json", "-c"])
        .arg(&config));
    let plan = plan_json(&ran);
    assert!(ran.stderr.contains("crown: online"), "{}", ran.stderr);

    // Downtime: cache left out with Crown's reason; api and worker blocked behind it.
    assert_eq!(plan["excluded"][0]["name"], "cache");
    assert_eq!(plan["excluded"][0]["reason"], "Crown downtime: memory swap");
    assert!(
        step(&plan, "api")["blocked"]
            .as_str()
            .unwrap()
            .contains("cache")
    );
    assert!(step(&plan, "worker")["blocked"].is_string());

    // GLM4V is not advertised: its launch is the first step, a task with the configured command.
    let names = step_names(&plan);
    assert_eq!(names[0], "crown-model.GLM4V", "{names:?}");
    let model = step(&plan, "crown-model.GLM4V");
    assert_eq!(model["kind"], "task");
    assert_eq!(model["command"], json!(["sh", "-c", "echo launched"]));
    assert!(
        model["reasons"][0]["text"]
            .as_str()
            .unwrap()
            .contains("does not advertise `GLM4V`")
    );

    // Suggestions: applied with provenance, rejected with why.
    let db = step(&plan, "db");
    assert_eq!(db["reasons"][0]["kind"], "crown");
    assert!(
        db["reasons"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Crown: prioritize db — slowest to warm")
    );
    let outcomes = plan["suggestions"]
        .as_array()
        .expect("suggestions recorded");
    assert_eq!(outcomes.len(), 4);
    assert_eq!(outcomes[0]["applied"], true);
    assert_eq!(outcomes[0]["source"]["via"], "handshake");
    assert_eq!(outcomes[1]["applied"], false);
    assert!(
        outcomes[1]["effect"]
            .as_str()
            .unwrap()
            .contains("would create a cycle: db -> api -> worker -> db")
    );
    assert!(
        outcomes[2]["effect"]
            .as_str()
            .unwrap()
            .contains("tries to change a command")
    );
    assert!(
        outcomes[3]["effect"]
            .as_str()
            .unwrap()
            .contains("unknown component `nosuch`")
    );
    assert_eq!(step(&plan, "db")["command"], json!(["sleep", "30"]));
    assert!(!names.contains(&"miner".to_owned()));

    // The text plan shows the same, with the rejections.
    let ran = run(razar(dir.path()).args(["plan", "-c"]).arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout
            .contains("crown rejected: after db worker — would create a cycle"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("excluded: Crown downtime: memory swap"),
        "{}",
        ran.stdout
    );
    assert_token_absent(dir.path(), &[&ran]);
}

#[test]
fn suggestions_cannot_touch_model_launches_and_model_names_stay_distinct() {
    let crown = FakeCrown::start(vec![vec![Act::Send(ack(json!({
        "suggestions": [
            {"action": "after", "component": "db", "after": "crown-model.GLM4V"},
            {"action": "prioritize", "component": "crown-model.GLM4V"},
            {"action": "skip", "component": "crown-model.GLM_4V"}
        ]
    })))]]);
    let dir = tempfile::tempdir().unwrap();
    // Two more capabilities whose names sanitise to the same task name.
    let section = format!(
        "{}\n    - {{capability: 'GLM 4V', launch: [sh, -c, 'echo a']}}\n    - {{capability: 'GLM/4V', launch: [sh, -c, 'echo b']}}",
        crown_section(&crown.url(), "5s", false)
    );
    let config = write_config(dir.path(), &section);
    let ran = run(razar(dir.path())
        .args(["plan", "--format", "json", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let plan = plan_json(&ran);
    let names = step_names(&plan);
    for model in [
        "crown-model.GLM4V",
        "crown-model.GLM_4V",
        "crown-model.GLM_4V-2",
    ] {
        assert_eq!(
            names.iter().filter(|n| *n == model).count(),
            1,
            "{model}: {names:?}"
        );
    }
    let outcomes = plan["suggestions"].as_array().expect("suggestions");
    assert_eq!(outcomes.len(), 3);
    for outcome in outcomes {
        assert_eq!(outcome["applied"], false, "{outcome}");
        assert!(
            outcome["effect"]
                .as_str()
                .unwrap()
                .contains("is razar's launch of a Crown model"),
            "{outcome}"
        );
    }
    let db_deps = &step(&plan, "db")["depends_on"];
    assert!(
        db_deps.is_null() || db_deps.as_array().is_some_and(Vec::is_empty),
        "{db_deps}"
    );
}

#[test]
fn a_refused_handshake_is_not_tried_again_during_the_boot() {
    let crown = FakeCrown::start(vec![vec![Act::Send(
        json!({"type": "handshake_ack", "ack": "denied", "detail": "maintenance window"})
            .to_string(),
    )]]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("razar.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nstate_dir: state\ncrown: {{url: {}, timeout: 2s, retries: 2}}\ncomponents:\n  - {{name: slow, kind: task, command: [sleep, '2']}}\n",
            crown.url()
        ),
    )
    .unwrap();
    let ran = run(razar(dir.path())
        .args(["apply", "--until-ready", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("Crown refused the handshake"),
        "{}",
        ran.stderr
    );
    // Reconnect pauses start at 100 ms: in 2 s an unreachable Crown is tried again and again.
    assert_eq!(crown.connections(), 1, "{}", ran.stderr);
}

#[test]
fn an_advertised_model_is_not_launched() {
    let crown = FakeCrown::start(vec![vec![Act::Send(ack(
        json!({"capabilities": ["GLM-4.1V"]}),
    ))]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crown_section(&crown.url(), "5s", false));
    let plan = plan_json(&run(razar(dir.path())
        .args(["plan", "--format", "json", "-c"])
        .arg(&config)));
    assert!(
        !step_names(&plan)
            .iter()
            .any(|n| n.starts_with("crown-model."))
    );
}

#[test]
fn plan_offline_ignores_the_crown_section() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &crown_section("ws://127.0.0.1:9/crown", "5s", true),
    );
    let ran = run(razar(dir.path())
        .args(["plan", "--offline", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        !dir.path().join("state").exists(),
        "an offline plan writes nothing"
    );
}

/// A port with nothing listening: bound, then released.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn unreachable_crown_goes_offline_or_aborts_when_required() {
    let url = format!("ws://127.0.0.1:{}/crown", dead_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crown_section(&url, "3s", false));
    let ran = run(razar(dir.path())
        .args(["plan", "--format", "json", "-c"])
        .arg(&config));
    let plan = plan_json(&ran);
    assert!(ran.stderr.contains("crown: offline"), "{}", ran.stderr);
    assert!(ran.stderr.contains("after 3 attempt(s)"), "{}", ran.stderr);
    assert!(
        ran.elapsed < Duration::from_secs(3 + 10),
        "{:?}",
        ran.elapsed
    );
    assert_eq!(
        step_names(&plan).len(),
        4,
        "offline: the plan is the config's"
    );
    let response = briefs(dir.path())
        .into_iter()
        .find(|n| n.ends_with("_response.json"))
        .expect("the failed exchange is archived");
    let response: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("state/mission_briefs").join(response)).unwrap(),
    )
    .unwrap();
    assert_eq!(response["type"], "razar_offline");
    assert!(
        interactions(dir.path())[0]["response_summary"]
            .as_str()
            .unwrap()
            .starts_with("offline")
    );

    let config = write_config(dir.path(), &crown_section(&url, "3s", true));
    let ran = run(razar(dir.path()).args(["plan", "-c"]).arg(&config));
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    assert!(ran.stderr.contains("Crown is required"), "{}", ran.stderr);
    assert!(ran.stdout.is_empty());

    let ran = run(razar(dir.path())
        .args(["crown", "handshake", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(3));
    assert_token_absent(dir.path(), &[&ran]);
}

#[test]
fn a_signal_while_crown_is_consulted_ends_the_apply_as_interrupted() {
    let crown = FakeCrown::start(vec![vec![]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crown_section(&crown.url(), "30s", false));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_razar"))
        .args(["apply", "--until-ready", "-c"])
        .arg(&config)
        .current_dir(dir.path())
        .env_remove("CROWN_WS_URL")
        .env(TOKEN_VAR, TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("razar runs");
    // Once the brief has arrived, razar waits for a reply that never comes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while crown.messages().is_empty() {
        assert!(Instant::now() < deadline, "no handshake arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    let asked = Instant::now();
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().expect("razar exits");
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    // Nothing started: no component left a log.
    let logs = dir.path().join("state/logs");
    let written: Vec<_> = std::fs::read_dir(&logs)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
                .collect()
        })
        .unwrap_or_default();
    assert!(written.is_empty(), "{written:?}");
}

#[test]
fn a_reconnect_reply_skips_what_is_under_downtime_and_judges_its_suggestions() {
    // Connection 1 accepts, then drops; the reconnect's reply puts `late` under downtime and
    // suggests skipping `other`.
    let crown = FakeCrown::start(vec![
        vec![Act::Send(ack(json!({}))), Act::Close],
        vec![Act::Send(ack(json!({
            "downtime": {"late": {"description": "disk swap"}},
            "suggestions": [{"action": "skip", "component": "other", "reason": "not needed"}]
        })))],
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("razar.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nstate_dir: state\nparallelism: 1\ncrown: {{url: {}, timeout: 5s}}\ncomponents:\n  - {{name: first, kind: task, command: [sleep, '2']}}\n  - {{name: late, kind: task, command: ['true'], depends_on: [first]}}\n  - {{name: other, kind: task, command: ['true'], depends_on: [first]}}\n",
            crown.url()
        ),
    )
    .unwrap();
    let ran = run(razar(dir.path())
        .args(["apply", "--until-ready", "--json", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    assert!(crown.connections() >= 2, "no reconnect: {}", ran.stderr);
    let events: Vec<Value> = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    let spawned = |name: &str| {
        events
            .iter()
            .any(|e| e["event"] == "spawned" && e["component"] == name)
    };
    assert!(spawned("first"));
    assert!(!spawned("late"), "{}", ran.stdout);
    assert!(!spawned("other"), "{}", ran.stdout);
    let skipped = |name: &str, why: &str| {
        events.iter().any(|e| {
            e["event"] == "skipped"
                && e["component"] == name
                && e["reason"].as_str().is_some_and(|r| r.contains(why))
        })
    };
    assert!(
        skipped("late", "Crown downtime: disk swap"),
        "{}",
        ran.stdout
    );
    assert!(skipped("other", "not needed"), "{}", ran.stdout);
}

#[test]
fn a_silent_crown_costs_the_timeout_and_no_more() {
    let crown = FakeCrown::start(vec![vec![]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crown_section(&crown.url(), "1s", false));
    let ran = run(razar(dir.path()).args(["plan", "-c"]).arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("no reply within the 1s timeout"),
        "{}",
        ran.stderr
    );
    assert!(ran.elapsed >= Duration::from_secs(1));
    assert!(
        ran.elapsed < Duration::from_secs(1 + 8),
        "{:?}",
        ran.elapsed
    );
    assert_eq!(crown.connections(), 1, "the timeout covers the retries too");
}

#[test]
fn invalid_json_and_unknown_types_are_skipped_and_logged() {
    let crown = FakeCrown::start(vec![vec![
        Act::Send("{this is not json".to_owned()),
        Act::Send(r#"{"type":"horoscope","sign":"leo"}"#.to_owned()),
        Act::Send("[1, 2, 3]".to_owned()),
        Act::Send(ack(json!({"capabilities": ["GLM4V"]}))),
    ]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crown_section(&crown.url(), "5s", false));
    let ran = run(razar(dir.path())
        .args(["crown", "handshake", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout.contains("skipped frame: invalid JSON"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("skipped frame: unknown message type `horoscope`")
    );
    assert!(
        ran.stdout
            .contains("skipped frame: message is not a JSON object")
    );
    assert!(
        ran.stderr.contains("frame rejected"),
        "logged: {}",
        ran.stderr
    );
    assert!(ran.stdout.contains("capabilities: GLM4V"));
}

#[test]
fn an_oversized_frame_is_refused_without_crashing() {
    let crown = FakeCrown::start(vec![vec![Act::SendHuge, Act::Send(ack(json!({})))]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crown_section(&crown.url(), "3s", false));
    let ran = run(razar(dir.path()).args(["plan", "-c"]).arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stderr.contains("crown: offline"), "{}", ran.stderr);
    assert!(ran.stderr.contains("1 MiB"), "{}", ran.stderr);
    assert_eq!(
        crown.connections(),
        3,
        "each attempt met the same frame: 1 + 2 retries"
    );
    assert!(ran.elapsed < Duration::from_secs(3 + 10));
}

#[test]
fn a_close_mid_handshake_is_retried_then_succeeds() {
    let crown = FakeCrown::start(vec![vec![Act::Close], vec![Act::Send(ack(json!({})))]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crown_section(&crown.url(), "5s", false));
    let ran = run(razar(dir.path())
        .args(["crown", "handshake", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("(2 attempt(s))"), "{}", ran.stdout);
    assert_eq!(crown.connections(), 2);

    let always_closes = FakeCrown::start(vec![vec![Act::Close]]);
    let config = write_config(
        dir.path(),
        &crown_section(&always_closes.url(), "3s", false),
    );
    let ran = run(razar(dir.path())
        .args(["crown", "handshake", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    assert!(
        ran.stdout.contains("closed the connection"),
        "{}",
        ran.stdout
    );
}

#[test]
fn a_refusing_crown_is_not_retried() {
    let crown = FakeCrown::start(vec![vec![Act::Send(
        r#"{"type":"handshake_ack","ack":"denied","detail":"maintenance window"}"#.to_owned(),
    )]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crown_section(&crown.url(), "5s", true));
    let ran = run(razar(dir.path()).args(["plan", "-c"]).arg(&config));
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("refused the handshake (ack `denied`: maintenance window)"),
        "{}",
        ran.stderr
    );
    assert_eq!(crown.connections(), 1);
}

#[test]
fn mission_briefs_keep_the_twenty_newest_pairs() {
    let crown = FakeCrown::start(vec![vec![Act::Send(ack(json!({})))]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &crown_section(&crown.url(), "5s", false));
    let mut first = None;
    for n in 0..22 {
        let ran = run(razar(dir.path())
            .args(["crown", "handshake", "-c"])
            .arg(&config));
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        if n == 0 {
            first = briefs(dir.path()).first().cloned();
        }
    }
    let names = briefs(dir.path());
    assert_eq!(names.len(), 40, "{names:?}");
    let first = first.expect("first brief archived");
    assert!(!names.contains(&first), "the oldest pair is gone");
    for name in names.iter().filter(|n| !n.contains('_')) {
        let response = name.replace(".json", "_response.json");
        assert!(names.contains(&response), "{name} lost its response");
    }
    assert_eq!(
        interactions(dir.path()).len(),
        22,
        "the log keeps every exchange"
    );
}

#[test]
fn plan_merges_a_suggestions_file_offline() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    std::fs::write(
        dir.path().join("advice.json"),
        r#"{"type": "suggestions", "items": [
             {"action": "prioritize", "component": "cache", "reason": "warm first"},
             {"action": "parallelism", "value": 1, "reason": "small box"},
             {"action": "defer", "component": "api", "value": "later"}
           ]}"#,
    )
    .unwrap();
    let ran = run(razar(dir.path())
        .args([
            "plan",
            "--format",
            "json",
            "--suggestions",
            "advice.json",
            "-c",
        ])
        .arg(&config));
    let plan = plan_json(&ran);
    assert_eq!(step_names(&plan)[0], "cache");
    assert_eq!(plan["parallelism"], 1);
    let outcomes = plan["suggestions"].as_array().unwrap();
    assert_eq!(
        outcomes[0]["source"],
        json!({"via": "file", "path": "advice.json"})
    );
    assert_eq!(outcomes[2]["applied"], false);
    assert!(
        outcomes[2]["effect"]
            .as_str()
            .unwrap()
            .contains("integer priority")
    );
    assert!(
        !dir.path().join("state").exists(),
        "no Crown: nothing written"
    );

    std::fs::write(
        dir.path().join("bad.json"),
        "{\"type\": \"suggestions\",\n  \"items\": [{\"component\": 3}]}",
    )
    .unwrap();
    let ran = run(razar(dir.path())
        .args(["plan", "--suggestions", "bad.json", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("bad.json:2:"), "{}", ran.stderr);
}

#[test]
fn python_websockets_crown_interoperates() {
    let dir = tempfile::tempdir().unwrap();
    let reply = dir.path().join("reply.json");
    std::fs::write(
        &reply,
        r#"{"ack": "ok", "capabilities": ["glm-4.1v"], "downtime": {"worker": "reindex"}}"#,
    )
    .unwrap();
    let record = dir.path().join("record.jsonl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/crown_peer.py");
    let mut peer = std::process::Command::new("python3")
        .arg(&script)
        .arg(&reply)
        .arg(&record)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("python3 runs the peer");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = peer.stdout.take().expect("peer stdout");
    let mut peer = Kill(peer);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("peer prints its port");
    let port: u16 = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let _ = peer.0.kill();
            panic!("the Python peer did not start (is `websockets` installed?): {line:?}")
        });
    let url = format!("ws://127.0.0.1:{port}/crown");
    let config = write_config(dir.path(), &crown_section(&url, "5s", true));
    let ran = run(razar(dir.path())
        .args(["plan", "--format", "json", "-c"])
        .arg(&config));
    let plan = plan_json(&ran);
    assert_eq!(plan["excluded"][0]["name"], "worker");
    assert_eq!(plan["excluded"][0]["reason"], "Crown downtime: reindex");
    let seen: Vec<Value> = std::fs::read_to_string(&record)
        .expect("the peer recorded the handshake")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(seen[0]["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(seen[0]["message"]["type"], "handshake");
    assert_eq!(seen[0]["message"]["brief"]["priority_map"]["db"], 0);

    // A boot streams its status to the Python Crown too.
    let section = format!("crown:\n  url: {url}\n  token_env: {TOKEN_VAR}\n  timeout: 5s");
    let config = tasks_config(dir.path(), &section, &[("a", "true"), ("b", "true")]);
    let ran = run(razar(dir.path())
        .args(["apply", "--until-ready", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let statuses: Vec<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|m| m["message"]["type"] == "status")
        .map(|m| {
            format!(
                "{}:{}",
                m["message"]["component"].as_str().unwrap(),
                m["message"]["state"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        statuses,
        ["a:starting", "a:completed", "b:starting", "b:completed"]
    );
    drop(peer);
}

// ---- razar apply with Crown ------------------------------------------------------------

/// A config of tasks (run with `sh -c`), parallelism 1, in the order given.
fn tasks_config(dir: &Path, crown: &str, tasks: &[(&str, &str)]) -> PathBuf {
    let mut text = format!("version: 1\nstate_dir: state\nparallelism: 1\n{crown}\ncomponents:\n");
    for (priority, (name, script)) in tasks.iter().enumerate() {
        text.push_str(&format!(
            "  - {{name: {name}, kind: task, priority: {priority}, cwd: ., restart: {{policy: never}}, command: {}}}\n",
            serde_json::to_string(script).unwrap()
        ));
    }
    let path = dir.join("razar.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The `--json` events of a run.
fn events(ran: &Ran) -> Vec<Value> {
    ran.stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn spawn_order(ran: &Ran) -> Vec<String> {
    events(ran)
        .iter()
        .filter(|e| e["event"] == "spawned")
        .map(|e| e["component"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits (in the component's shell) until the interaction log mentions `text`; gives up
/// (exit 1, so the test fails instead of hanging) after 30 s.
fn wait_for_log(text: &str) -> String {
    format!(
        "i=0; until grep -q '{text}' state/interaction_log.jsonl 2>/dev/null; do \
         i=$((i+1)); [ $i -gt 1500 ] && exit 1; sleep 0.02; done"
    )
}

#[test]
fn apply_streams_status_and_reorders_steps_not_yet_started() {
    // Crown answers the first `starting` status with a suggestion to run `b` before `a`.
    let suggestion = r#"{"type":"suggestions","items":[{"action":"prioritize","component":"b","reason":"b feeds the cache"},{"action":"defer","component":"first"}]}"#;
    let crown = FakeCrown::start(vec![vec![
        Act::Send(ack(
            json!({"suggestions": [{"action": "skip", "component": "ghost"}]}),
        )),
        Act::Send(suggestion.to_owned()),
    ]]);
    let dir = tempfile::tempdir().unwrap();
    let config = tasks_config(
        dir.path(),
        &format!(
            "crown:\n  url: {}\n  token_env: {TOKEN_VAR}\n  timeout: 5s",
            crown.url()
        ),
        &[
            ("first", &wait_for_log("applied: prioritize b")),
            ("a", "true"),
            ("b", "true"),
        ],
    );
    let ran = run(razar(dir.path())
        .args(["apply", "--until-ready", "--json", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(spawn_order(&ran), ["first", "b", "a"], "{}", ran.stdout);
    let log = interactions(dir.path());
    let summaries: Vec<&str> = log
        .iter()
        .map(|i| i["response_summary"].as_str().unwrap())
        .collect();
    assert!(
        summaries
            .iter()
            .any(|s| s.starts_with("applied: prioritize b")),
        "{summaries:?}"
    );
    assert!(
        summaries
            .iter()
            .any(|s| s.starts_with("rejected: defer first") && s.contains("already started")),
        "{summaries:?}"
    );
    assert!(log.iter().any(|i| i["action"] == "status_stream"));
    // Crown heard every state change, in order.
    let states: Vec<String> = crown
        .messages()
        .iter()
        .filter(|m| m["type"] == "status")
        .map(|m| {
            format!(
                "{}:{}",
                m["component"].as_str().unwrap(),
                m["state"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            "first:starting",
            "first:completed",
            "b:starting",
            "b:completed",
            "a:starting",
            "a:completed"
        ],
    );
    // Every judged suggestion is in the state with its provenance and verdict …
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/razar_state.json")).unwrap())
            .unwrap();
    let stored: Vec<(String, String, bool)> = state["suggestions"]
        .as_array()
        .expect("suggestions in razar_state.json")
        .iter()
        .map(|s| {
            (
                s["source"]["via"].as_str().unwrap().to_owned(),
                format!(
                    "{} {}",
                    s["suggestion"]["action"], s["suggestion"]["component"]
                ),
                s["applied"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stored,
        [
            (
                "handshake".to_owned(),
                r#""skip" "ghost""#.to_owned(),
                false
            ),
            ("message".to_owned(), r#""prioritize" "b""#.to_owned(), true),
            ("message".to_owned(), r#""defer" "first""#.to_owned(), false),
        ],
        "{state:#}"
    );
    assert!(
        state["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "suggestion" && e["component"] == "b"),
        "{state:#}"
    );
    // … and an offline `razar plan` lists them from the database, whichever way they came.
    let planned = run(razar(dir.path())
        .args(["plan", "--offline", "-c"])
        .arg(&config));
    assert_eq!(planned.code, Some(0), "{}", planned.stderr);
    let listed: Vec<&str> = planned
        .stderr
        .lines()
        .filter(|l| l.starts_with("  "))
        .collect();
    assert_eq!(listed.len(), 3, "{}", planned.stderr);
    assert!(
        listed[0].contains("handshake")
            && listed[0].contains("rejected")
            && listed[0].contains("skip ghost")
            && listed[0].contains("unknown component"),
        "{}",
        planned.stderr
    );
    assert!(
        listed[1].contains("mid-boot")
            && listed[1].contains("applied")
            && listed[1].contains("prioritize b — b feeds the cache"),
        "{}",
        planned.stderr
    );
    assert!(
        listed[2].contains("mid-boot")
            && listed[2].contains("rejected")
            && listed[2].contains("already started"),
        "{}",
        planned.stderr
    );
    assert_token_absent(dir.path(), &[&ran]);
}

#[test]
fn suggestions_from_a_file_in_a_saved_plan_are_recorded_when_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = tasks_config(dir.path(), "", &[("a", "true"), ("b", "true")]);
    std::fs::write(
        dir.path().join("advice.json"),
        r#"{"type": "suggestions", "items": [
             {"action": "prioritize", "component": "b", "reason": "warm first"},
             {"action": "add", "component": "c"}
           ]}"#,
    )
    .unwrap();
    let saved = run(razar(dir.path())
        .args([
            "plan",
            "--suggestions",
            "advice.json",
            "-o",
            "plan.json",
            "-c",
        ])
        .arg(&config));
    assert_eq!(saved.code, Some(0), "{}", saved.stderr);
    let ran = run(razar(dir.path()).args(["apply", "--until-ready", "--json", "plan.json"]));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(spawn_order(&ran), ["b", "a"], "{}", ran.stdout);
    let planned = run(razar(dir.path()).args(["plan", "-c"]).arg(&config));
    assert_eq!(planned.code, Some(0), "{}", planned.stderr);
    let listed: Vec<&str> = planned
        .stderr
        .lines()
        .filter(|l| l.starts_with("  "))
        .collect();
    assert_eq!(listed.len(), 2, "{}", planned.stderr);
    assert!(
        listed[0].contains("file")
            && listed[0].contains("applied")
            && listed[0].contains("prioritize b — warm first")
            && listed[0].contains("advice.json"),
        "{}",
        planned.stderr
    );
    assert!(
        listed[1].contains("rejected") && listed[1].contains("tries to add a component"),
        "{}",
        planned.stderr
    );
}

#[test]
fn apply_records_a_failed_model_launch_with_its_exit_status() {
    let crown = FakeCrown::start(vec![vec![Act::Send(ack(json!({})))]]);
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "crown:\n  url: {}\n  models:\n    - {{capability: GLM4V, launch: [sh, -c, 'echo no gpu >&2; exit 3']}}",
        crown.url()
    );
    let config = tasks_config(dir.path(), &section, &[("a", "true")]);
    let ran = run(razar(dir.path())
        .args(["apply", "--until-ready", "--json", "-c"])
        .arg(&config));
    // A failed launch does not hold the boot, but the run reports the failure.
    assert!(
        spawn_order(&ran).contains(&"a".to_owned()),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/razar_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["launched_models"], json!([]), "{state:#}");
    let launches = state["model_launches"].as_array().expect("model_launches");
    assert_eq!(launches.len(), 1, "{state:#}");
    assert_eq!(launches[0]["model"], "GLM4V");
    assert_eq!(launches[0]["outcome"], "failed");
    assert_eq!(launches[0]["exit"], json!({"code": 3, "signal": null}));
    let note = state["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "model_launch")
        .expect("a model_launch event");
    assert_eq!(note["model"], "GLM4V");
    assert!(
        note["detail"]
            .as_str()
            .unwrap()
            .starts_with("failed (exit code 3)"),
        "{note:#}"
    );
}

#[test]
fn apply_reconnects_after_crown_drops_mid_boot() {
    let crown = FakeCrown::start(vec![
        vec![Act::Send(ack(json!({}))), Act::Close],
        vec![Act::Send(ack(json!({})))],
    ]);
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "crown:\n  url: {}\n  token_env: {TOKEN_VAR}\n  timeout: 2s",
        crown.url()
    );
    let config = tasks_config(
        dir.path(),
        &section,
        &[("a", &wait_for_log("reconnected")), ("b", "true")],
    );
    let ran = run(razar(dir.path())
        .args(["apply", "--until-ready", "--json", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(crown.connections(), 2);
    let messages = crown.messages();
    let handshakes: Vec<&Value> = messages
        .iter()
        .filter(|m| m["type"] == "handshake")
        .collect();
    assert_eq!(handshakes.len(), 2);
    assert_eq!(
        handshakes[1]["brief"]["current_status"]["a"], "starting",
        "the new brief is current"
    );
    assert!(
        messages
            .iter()
            .any(|m| m["type"] == "status" && m["component"] == "b" && m["state"] == "completed")
    );
    // Both handshakes are archived.
    assert_eq!(briefs(dir.path()).len(), 4);
    assert_eq!(crown.authorization().len(), 2);
    assert!(
        crown
            .authorization()
            .iter()
            .all(|a| a.as_deref() == Some(&*format!("Bearer {TOKEN}")))
    );
    assert_token_absent(dir.path(), &[&ran]);
}

#[test]
fn apply_launches_a_missing_model_first_and_skips_components_under_downtime() {
    let crown = FakeCrown::start(vec![vec![Act::Send(ack(json!({
        "capabilities": ["whisper"],
        "downtime": {"c": "disk swap"}
    })))]]);
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "crown:\n  url: {}\n  models:\n    - {{capability: GLM4V, launch: [sh, -c, 'echo launched > model.txt']}}",
        crown.url()
    );
    let config = tasks_config(
        dir.path(),
        &section,
        &[("a", "test -f model.txt"), ("c", "true"), ("d", "true")],
    );
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("{name: d,", "{name: d, depends_on: [c],"),
    )
    .unwrap();
    let ran = run(razar(dir.path())
        .args(["apply", "--until-ready", "--json", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(1), "d is blocked behind c: {}", ran.stderr);
    assert_eq!(
        spawn_order(&ran),
        ["crown-model.GLM4V", "a"],
        "{}",
        ran.stdout
    );
    let evs = events(&ran);
    assert!(evs.iter().any(|e| e["event"] == "skipped"
        && e["component"] == "c"
        && e["reason"] == "Crown downtime: disk swap"));
    assert!(
        evs.iter()
            .any(|e| e["event"] == "blocked" && e["component"] == "d")
    );
    let launch = briefs(dir.path())
        .into_iter()
        .find(|n| n.ends_with("_GLM4V_launch.json"))
        .expect("the launch is archived");
    let launch: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("state/mission_briefs").join(launch)).unwrap(),
    )
    .unwrap();
    assert_eq!(launch["outcome"], "completed");
    assert!(
        interactions(dir.path())
            .iter()
            .any(|i| i["action"] == "model_launch")
    );
    // The state records the handshake and the launch (ABZU's keys).
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/razar_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["handshake"]["acknowledgement"], "ok", "{state:#}");
    assert_eq!(state["launched_models"], json!(["GLM4V"]), "{state:#}");
    assert_eq!(
        state["model_launches"][0]["outcome"], "completed",
        "{state:#}"
    );
    assert!(
        state["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "model_launch" && e["model"] == "GLM4V"),
        "{state:#}"
    );
}

#[test]
fn apply_without_a_required_crown_starts_nothing_and_exits_3() {
    let url = format!("ws://127.0.0.1:{}/crown", dead_port());
    let dir = tempfile::tempdir().unwrap();
    let section = format!("crown:\n  url: {url}\n  timeout: 1s\n  required: true");
    let config = tasks_config(dir.path(), &section, &[("a", "touch ran.txt")]);
    let ran = run(razar(dir.path())
        .args(["apply", "--until-ready", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    assert!(ran.stderr.contains("Crown is required"), "{}", ran.stderr);
    assert!(!dir.path().join("ran.txt").exists(), "nothing started");
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/razar_state.json")).unwrap())
            .unwrap();
    assert_eq!(
        state["handshake"]["outcome"], "offline",
        "the state says why: {state:#}"
    );

    let section = format!("crown:\n  url: {url}\n  timeout: 1s\n  required: false");
    let config = tasks_config(dir.path(), &section, &[("a", "touch ran.txt")]);
    let ran = run(razar(dir.path())
        .args(["apply", "--until-ready", "-c"])
        .arg(&config));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stderr.contains("crown: offline"), "{}", ran.stderr);
    assert!(dir.path().join("ran.txt").exists());
    // The state says razar booted without Crown.
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/razar_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["handshake"]["outcome"], "offline", "{state:#}");
}

#[test]
fn a_saved_plan_runs_as_saved_with_crowns_downtime_adopted_before_the_boot() {
    let crown = FakeCrown::start(vec![vec![Act::Send(ack(json!({
        "downtime": {"b": {"description": "disk swap"}},
        "suggestions": [{"action": "prioritize", "component": "c"}]
    })))]]);
    let dir = tempfile::tempdir().unwrap();
    let section = format!("crown:\n  url: {}\n  timeout: 5s", crown.url());
    let config = tasks_config(
        dir.path(),
        &section,
        &[("a", "true"), ("b", "true"), ("c", "true")],
    );
    let saved = run(razar(dir.path())
        .args(["plan", "--offline", "-o", "saved.json", "-c"])
        .arg(&config));
    assert_eq!(saved.code, Some(0), "{}", saved.stderr);
    let ran = run(razar(dir.path()).args(["apply", "saved.json", "--until-ready", "--json"]));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(spawn_order(&ran), ["c", "a"], "{}", ran.stdout);
    assert!(
        events(&ran)
            .iter()
            .any(|e| e["event"] == "skipped" && e["component"] == "b"),
        "{}",
        ran.stdout
    );
}
