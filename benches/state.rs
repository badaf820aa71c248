//! What checkpointing costs the executor: a 2,000-task no-op DAG's event stream (run start,
//! then spawned + completed per task, run end) replayed into a fresh store in a temp dir, the
//! way `razar apply` feeds its recorder. Figures and the durability design: docs/state.md.
//!
//! Reproduce: `cargo bench --bench state`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use razar::exec::{Event, EventKind, Outcome, Sink};
use razar::state::Store;

const TASKS: usize = 2_000;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let mut yaml = String::from("version: 1\ncomponents:\n");
    for i in 0..TASKS {
        yaml.push_str(&format!(
            "  - name: t{i}\n    kind: task\n    command: [\"true\"]\n"
        ));
        if i > 0 {
            let deps: Vec<String> = [i / 2, i / 3, i - 1]
                .iter()
                .map(|d| format!("t{d}"))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            yaml.push_str(&format!("    depends_on: [{}]\n", deps.join(", ")));
        }
    }
    let path = dir.join("razar.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

fn event(at_ms: u64, kind: EventKind) -> Event {
    Event {
        at_ms,
        time: "2025-01-01T00:00:00.000Z".to_owned(),
        kind,
    }
}

fn replay(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = config(tmp.path());
    let graph = razar::graph::load(&[path]).expect("valid config");
    let selected = graph.select(&[]).expect("all");
    let plan = razar::plan::build(&graph, &selected, &razar::plan::Options::default());
    let me = std::process::id();
    let mut events = vec![event(
        0,
        EventKind::RunStarted {
            run_id: "bench".into(),
            config_hash: plan.config_hash.clone(),
            strategy: "priority".into(),
            parallelism: 2,
            steps: TASKS,
            resumed: false,
        },
    )];
    for (i, step) in plan.steps.iter().enumerate() {
        events.push(event(
            i as u64,
            EventKind::Spawned {
                component: step.name.clone(),
                attempt: 1,
                pid: me,
                pgid: me,
                start_time: 1,
            },
        ));
        events.push(event(
            i as u64 + 1,
            EventKind::Completed {
                component: step.name.clone(),
                attempt: 1,
                after_ms: 1,
            },
        ));
    }
    events.push(event(
        TASKS as u64 + 1,
        EventKind::RunFinished {
            outcome: Outcome::Success,
            elapsed_ms: TASKS as u64,
        },
    ));

    let mut group = c.benchmark_group("state");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("record 2000-task no-op run", |b| {
        b.iter_with_setup(
            || {
                let dir = tempfile::tempdir_in(tmp.path()).expect("state dir");
                let store = Store::open(dir.path()).expect("open store");
                (dir, store)
            },
            |(dir, store)| {
                let mut recorder = store.recorder(&plan);
                for e in &events {
                    recorder.emit(e);
                }
                drop(recorder);
                drop(store);
                dir
            },
        );
    });
    group.finish();
}

/// The two ways to make one ~400-byte checkpoint survive `kill -9`: flush sled, or append it
/// to a journal file (what the store does).
fn per_event(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let record = vec![b'x'; 400];
    let mut group = c.benchmark_group("durability per event");
    group.sample_size(20);
    let db = sled::open(tmp.path().join("db")).expect("sled opens");
    let mut n = 0u64;
    group.bench_function("sled insert + flush", |b| {
        b.iter(|| {
            n += 1;
            db.insert(n.to_be_bytes(), record.as_slice())
                .expect("insert");
            db.flush().expect("flush");
        })
    });
    group.bench_function("sled insert, no flush (lost on kill -9)", |b| {
        b.iter(|| {
            n += 1;
            db.insert(n.to_be_bytes(), record.as_slice())
                .expect("insert");
        })
    });
    let mut journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp.path().join("journal"))
        .expect("journal opens");
    group.bench_function("journal append (write, no fsync)", |b| {
        b.iter(|| {
            use std::io::Write;
            journal.write_all(&record).expect("append");
        })
    });
    group.finish();
}

criterion_group!(benches, replay, per_event);
criterion_main!(benches);
