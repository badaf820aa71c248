//! Executor benchmarks, side by side in one run (figures in docs/benchmarks.md):
//!
//! - `overhead`: a 2,000-node DAG of no-op tasks (`true`, about 3 dependencies each) at
//!   parallelism 2, run by `razar apply`, `ninja -j2` and `make -j2` on the same DAG;
//! - `readiness`: a chain of 20 services, each binding its port 50 ms after it starts, with tcp
//!   probes: time to all-ready against the ideal 20 × (50 ms + spawn time), and the delay each
//!   edge adds;
//! - `supervision`: 200 idle services supervised for 10 s: razar's CPU time and memory.
//!
//! `cargo bench --bench exec [-- overhead|readiness|supervision]`. The benchmark binary is also
//! the service the readiness and supervision runs start (`exec serve MS PORT`, `exec idle`), so
//! the figures measure razar, not an interpreter's start-up.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The razar binary the runs use: cargo's release build, or `RAZAR_BIN` (to measure another
/// build, say an earlier commit's, with the same harness).
fn razar_bin() -> String {
    std::env::var("RAZAR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_razar").to_owned())
}

/// Sizes of one benchmark run. `cargo bench` passes `--bench` and gets the real sizes;
/// `cargo test` (CI runs `cargo test --all-targets`) runs the same code on tiny sizes, as a
/// check that the harness still works, in a couple of seconds.
#[derive(Clone, Copy)]
struct Scale {
    nodes: usize,
    rounds: usize,
    chain: usize,
    chain_runs: usize,
    idle: usize,
    window: Duration,
}

const FULL: Scale = Scale {
    nodes: 2000,
    rounds: 7,
    chain: 20,
    chain_runs: 3,
    idle: 200,
    window: Duration::from_secs(10),
};

const SMOKE: Scale = Scale {
    nodes: 20,
    rounds: 1,
    chain: 3,
    chain_runs: 1,
    idle: 5,
    window: Duration::from_millis(200),
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => return serve(&args[1..]),
        Some("idle") => loop {
            std::thread::park();
        },
        Some("noop") => return,
        _ => {}
    }
    let scale = if args.iter().any(|a| a == "--bench") {
        FULL
    } else {
        SMOKE
    };
    let wanted: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| wanted.is_empty() || wanted.contains(&name);
    println!("# razar executor benchmarks\n");
    println!("machine: {} CPU(s), {}\n", cpus(), kernel());
    if run("overhead") {
        overhead(scale);
    }
    if run("readiness") {
        readiness(scale);
    }
    if run("supervision") {
        supervision(scale);
    }
}

/// `serve MS PORT`: sleep MS milliseconds, then listen on PORT and accept forever.
fn serve(args: &[String]) {
    let delay: u64 = args[0].parse().expect("delay in ms");
    let port: u16 = args[1].parse().expect("port");
    std::thread::sleep(Duration::from_millis(delay));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    for stream in listener.incoming() {
        drop(stream);
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "unknown kernel".to_owned())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn available(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Wall time of one run of `command` (its output discarded); panics if it fails.
fn time(command: &mut Command) -> f64 {
    let start = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run benchmark command");
    let elapsed = start.elapsed().as_secs_f64();
    assert!(status.success(), "{command:?} failed: {status}");
    elapsed
}

fn overhead(scale: Scale) {
    let (nodes, rounds) = (scale.nodes, scale.rounds);
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // A deterministic DAG: node i depends on up to 3 distinct earlier nodes among the previous
    // 50 (a wide DAG, like a build graph, so parallelism 2 is always saturated).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let deps: Vec<Vec<usize>> = (0..nodes)
        .map(|i| {
            let mut ds: Vec<usize> = (0..3.min(i))
                .map(|_| i - 1 - (next() as usize % i.min(50)))
                .collect();
            ds.sort_unstable();
            ds.dedup();
            ds
        })
        .collect();
    let edges: usize = deps.iter().map(Vec::len).sum();
    let mut yaml = String::from("version: 1\nstate_dir: state\nparallelism: 2\ncomponents:\n");
    let mut ninja = String::from("rule run\n  command = true\n");
    let mut make = String::from(".PHONY: all");
    for i in 0..nodes {
        make.push_str(&format!(" n{i}"));
    }
    make.push_str("\nall:");
    for i in 0..nodes {
        make.push_str(&format!(" n{i}"));
    }
    make.push('\n');
    for (i, ds) in deps.iter().enumerate() {
        let list: Vec<String> = ds.iter().map(|d| format!("n{d}")).collect();
        yaml.push_str(&format!(
            "  - {{name: n{i}, kind: task, command: [\"true\"], depends_on: [{}]}}\n",
            list.join(", ")
        ));
        ninja.push_str(&format!("build n{i}: run | {}\n", list.join(" ")));
        make.push_str(&format!("n{i}: {}\n\t@true\n", list.join(" ")));
    }
    std::fs::write(d.join("dag.yaml"), &yaml).expect("write yaml");
    // The same DAG in a state directory that has seen many boots: every history ring full,
    // the steady state of a stack razar has been booting for a while.
    let long = d.join("long");
    std::fs::create_dir_all(&long).expect("mkdir");
    std::fs::write(long.join("dag.yaml"), &yaml).expect("write yaml");
    seed_history(&long, razar::state::HISTORY_LIMIT);
    std::fs::write(d.join("build.ninja"), ninja).expect("write ninja");
    std::fs::write(d.join("Makefile"), make).expect("write make");

    // Rounds interleave the runners, so a burst of load on this shared machine hits all of
    // them alike. razar runs twice per round: "cold" with a fresh state directory (2,000 log
    // files to create) and "warm" with the logs of the previous run in place (every boot but
    // the first).
    let apply = |dir: &Path| {
        time(
            Command::new(razar_bin())
                .args([
                    "apply",
                    "-c",
                    "dag.yaml",
                    "--until-ready",
                    "--parallelism",
                    "2",
                ])
                .current_dir(dir),
        )
    };
    let razar = |fresh: bool| {
        if fresh {
            let _ = std::fs::remove_dir_all(d.join("state"));
        }
        apply(d)
    };
    // One boot first, so the long-history runs find their log files in place like the others.
    apply(&long);
    // The executor alone, through the library: the same plan run by `exec::run` with events
    // collected in memory (no state store, no terminal output), to separate its cost from
    // the state store's checkpoints.
    let library = || {
        let graph = razar::graph::load(&[d.join("dag.yaml")]).expect("valid DAG");
        let selected = graph.select(&[]).expect("all");
        let plan = razar::plan::build(&graph, &selected, &razar::plan::Options::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let start = Instant::now();
        let mut options = razar::exec::Options::new("bench");
        options.until_ready = true;
        let mut sink = razar::exec::event::Collect::default();
        let outcome = runtime
            .block_on(razar::exec::run(
                &plan,
                options,
                razar::exec::Shutdown::new(),
                &mut sink,
            ))
            .expect("valid plan");
        assert_eq!(outcome, razar::exec::Outcome::Success);
        start.elapsed().as_secs_f64()
    };
    let ninja = || {
        let _ = std::fs::remove_file(d.join(".ninja_log"));
        let _ = std::fs::remove_file(d.join(".ninja_deps"));
        time(Command::new("ninja").args(["-j2"]).current_dir(d))
    };
    let make = || {
        time(
            Command::new("make")
                .args(["-j2", "-s", "all"])
                .current_dir(d),
        )
    };
    let has_ninja = available("ninja");
    let has_make = available("make");
    if !has_ninja {
        println!("(ninja not installed: `apt-get install ninja-build`)");
    }
    let (mut warm, mut cold, mut longs, mut libs, mut ninjas, mut makes) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for _ in 0..rounds {
        cold.push(razar(true));
        warm.push(razar(false));
        longs.push(apply(&long));
        libs.push(library());
        if has_ninja {
            ninjas.push(ninja());
        }
        if has_make {
            makes.push(make());
        }
    }
    let mut rows = vec![
        (
            "razar apply --until-ready --parallelism 2 (warm state dir)",
            warm,
        ),
        (
            "razar apply --until-ready --parallelism 2 (fresh state dir)",
            cold,
        ),
        (
            "razar apply --until-ready --parallelism 2 (state dir with full history)",
            longs,
        ),
        ("exec::run alone (library, no state store, no output)", libs),
    ];
    if has_ninja {
        rows.push(("ninja -j2", ninjas));
    }
    if has_make {
        rows.push(("make -j2", makes));
    }
    println!("## overhead: {nodes} no-op tasks, {edges} dependencies, parallelism 2\n");
    println!("{rounds} interleaved rounds, wall time of the whole command\n");
    println!("| runner | median | best | median vs ninja |\n| --- | ---: | ---: | ---: |");
    let ninja_median = rows
        .iter()
        .find(|(name, _)| name.starts_with("ninja"))
        .map(|(_, times)| median(times.clone()));
    for (name, times) in &rows {
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(times.clone());
        let ratio = ninja_median.map_or("–".to_owned(), |n| format!("{:.2}×", med / n));
        println!("| `{name}` | {med:.3} s | {best:.3} s | {ratio} |");
    }
    println!();
}

/// Records `boots` boots of every component of `dir/dag.yaml` in `dir/state` through the
/// store's recorder (what that many applies would leave in the history, in seconds instead of
/// minutes): each component completes, taking 0 to 3 ms.
fn seed_history(dir: &Path, boots: usize) {
    use razar::exec::event::{Event, EventKind, Sink};
    let graph = razar::graph::load(&[dir.join("dag.yaml")]).expect("valid DAG");
    let selected = graph.select(&[]).expect("all");
    let plan = razar::plan::build(&graph, &selected, &razar::plan::Options::default());
    let store = razar::state::Store::open(&dir.join("state")).expect("open the state");
    let mut recorder = store.recorder(&plan);
    let event = |kind: EventKind| Event {
        at_ms: 0,
        time: razar::exec::now_rfc3339(),
        kind,
    };
    for boot in 0..boots {
        recorder.emit(&event(EventKind::RunStarted {
            run_id: format!("seed-{boot}"),
            config_hash: "seed".to_owned(),
            strategy: "priority".to_owned(),
            parallelism: 2,
            steps: plan.steps.len(),
            resumed: false,
        }));
        for (i, step) in plan.steps.iter().enumerate() {
            recorder.emit(&event(EventKind::Completed {
                component: step.name.clone(),
                attempt: 1,
                after_ms: ((boot + i) % 4) as u64,
            }));
        }
        recorder.emit(&event(EventKind::RunFinished {
            outcome: razar::exec::Outcome::Success,
            elapsed_ms: 1,
        }));
    }
    drop(recorder);
    store.close().expect("close the state");
}

/// Starts `razar apply --json ARGS` in `dir` and returns the child and its event lines.
fn spawn_json(
    dir: &Path,
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<serde_json::Value>,
) {
    let mut child = Command::new(razar_bin())
        .arg("apply")
        .args(args)
        .arg("--json")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn razar");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(event) = serde_json::from_str(&line) else {
                continue;
            };
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port 0")
        .port()
}

/// Mean time to spawn and reap this binary doing nothing: the "spawn time" of the ideal.
fn spawn_time(me: &Path) -> f64 {
    const N: usize = 50;
    let start = Instant::now();
    for _ in 0..N {
        let status = Command::new(me).arg("noop").status().expect("spawn noop");
        assert!(status.success());
    }
    start.elapsed().as_secs_f64() / N as f64
}

fn readiness(scale: Scale) {
    const DELAY_MS: u64 = 50;
    let (services, runs) = (scale.chain, scale.chain_runs);
    let me = std::env::current_exe().expect("own path");
    let spawn = spawn_time(&me);
    let ideal = services as f64 * (DELAY_MS as f64 / 1000.0 + spawn);
    let mut totals = Vec::new();
    let mut edge_means = Vec::new();
    let mut edge_maxes = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut yaml = String::from("version: 1\nstate_dir: state\nparallelism: 2\ncomponents:\n");
        for i in 0..services {
            let port = free_port();
            let deps = if i == 0 {
                "[]".to_owned()
            } else {
                format!("[s{}]", i - 1)
            };
            yaml.push_str(&format!(
                "  - {{name: s{i}, command: [\"{}\", serve, \"{DELAY_MS}\", \"{port}\"], depends_on: {deps}, ready: {{tcp: \"127.0.0.1:{port}\", interval: 100ms, timeout: 10s}}}}\n",
                me.display()
            ));
        }
        std::fs::write(dir.path().join("chain.yaml"), yaml).expect("write");
        let (mut child, rx) = spawn_json(dir.path(), &["-c", "chain.yaml", "--until-ready"]);
        let mut spawned = vec![0u64; services];
        let mut ready = vec![0u64; services];
        let mut boot = 0u64;
        for event in rx.iter() {
            let at = event["at_ms"].as_u64().unwrap_or(0);
            let index = event["component"]
                .as_str()
                .and_then(|c| c.strip_prefix('s'))
                .and_then(|i| i.parse::<usize>().ok());
            match (event["event"].as_str(), index) {
                (Some("spawned"), Some(i)) => spawned[i] = at,
                (Some("ready"), Some(i)) => ready[i] = at,
                (Some("boot_finished"), _) => boot = event["elapsed_ms"].as_u64().unwrap_or(0),
                _ => {}
            }
        }
        let status = child.wait().expect("wait razar");
        assert!(status.success(), "chain run failed");
        // What each edge adds beyond the service's own 50 ms: spawn, probe detection, scheduling.
        let edges: Vec<f64> = (1..services)
            .map(|i| (spawned[i] - spawned[i - 1]) as f64 - DELAY_MS as f64)
            .collect();
        edge_means.push(edges.iter().sum::<f64>() / edges.len() as f64);
        edge_maxes.push(edges.iter().copied().fold(0.0, f64::max));
        totals.push(boot.max(ready[services - 1]) as f64 / 1000.0);
    }
    let total = median(totals);
    println!(
        "## readiness: a chain of {services} services, each listening {DELAY_MS} ms after it starts, tcp probes\n"
    );
    println!(
        "median of {runs} runs; spawn time of the service binary: {:.2} ms\n",
        spawn * 1000.0
    );
    println!("| measure | value |\n| --- | ---: |");
    println!(
        "| time to all-ready (run start → last ready) | {:.3} s |",
        total
    );
    println!(
        "| ideal: {services} × ({DELAY_MS} ms + spawn time) | {:.3} s |",
        ideal
    );
    println!(
        "| razar vs ideal | {:+.1}% |",
        (total / ideal - 1.0) * 100.0
    );
    println!(
        "| per edge beyond {DELAY_MS} ms (spawn + detection + scheduling), mean | {:.2} ms |",
        median(edge_means)
    );
    println!("| per edge, worst | {:.0} ms |", median(edge_maxes));
    println!();
}

/// CPU time of every thread of `pid`, from /proc/PID/task/*/schedstat (nanoseconds).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn supervision(scale: Scale) {
    let (services, window) = (scale.idle, scale.window);
    let me = std::env::current_exe().expect("own path");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut yaml = String::from("version: 1\nstate_dir: state\nparallelism: 50\ncomponents:\n");
    for i in 0..services {
        yaml.push_str(&format!(
            "  - {{name: idle{i}, command: [\"{}\", idle]}}\n",
            me.display()
        ));
    }
    std::fs::write(dir.path().join("idle.yaml"), yaml).expect("write");
    let started = Instant::now();
    let (mut child, rx) = spawn_json(dir.path(), &["-c", "idle.yaml"]);
    let pid = child.id();
    let mut boot_ms = 0;
    for event in rx.iter() {
        if event["event"] == "boot_finished" {
            boot_ms = event["elapsed_ms"].as_u64().unwrap_or(0);
            assert_eq!(event["ready"].as_u64(), Some(services as u64));
            break;
        }
    }
    let before = cpu_ns(pid);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let used = cpu_ns(pid) - before;
    let measured = t0.elapsed().as_secs_f64();
    let rss = status_kb(pid, "VmRSS:");
    let hwm = status_kb(pid, "VmHWM:");
    let stop = Instant::now();
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGINT) };
    let stopped = rx.iter().filter(|e| e["event"] == "stopped").count();
    let status = child.wait().expect("wait razar");
    let shutdown = stop.elapsed().as_secs_f64();
    assert!(status.success(), "supervision run failed: {status}");
    assert_eq!(stopped, services);
    let _ = std::io::stdout().flush();
    println!(
        "## supervision: {services} idle services for {:.1} s\n",
        window.as_secs_f64()
    );
    let window = measured;
    println!("| measure | value |\n| --- | ---: |");
    println!(
        "| boot (parallelism 50, 100 ms liveness window each) | {:.3} s |",
        boot_ms as f64 / 1000.0
    );
    println!(
        "| razar CPU while supervising | {:.3} s in {:.1} s = {:.3}% of one core |",
        used as f64 / 1e9,
        window,
        used as f64 / 1e9 / window * 100.0
    );
    println!(
        "| razar RSS while supervising | {:.1} MB |",
        rss as f64 / 1024.0
    );
    println!("| razar peak RSS | {:.1} MB |", hwm as f64 / 1024.0);
    println!(
        "| ordered shutdown of all {services} (SIGINT → exit) | {:.3} s |",
        shutdown
    );
    println!("| whole run | {:.1} s |", started.elapsed().as_secs_f64());
    println!();
}
