//! Load + validate + compile + plan on generated configs of 1k, 10k and 100k components
//! (about three dependencies each), and writing the plan file. docs/benchmarks.md has the
//! figures and the commands.
//!
//! The DAG is the one `benches/gen_dag.py` writes: component i depends on up to three
//! distinct earlier components, chosen by a seeded generator.

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

// The binary's allocator and settings (src/main.rs), so these figures are the CLI's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` (see src/main.rs).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// splitmix64: a small seeded generator, so every run benchmarks the same DAG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Writes a razar.yaml of `n` components with up to three dependencies each.
fn generate(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join(format!("razar-{n}.yaml"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("temp file"));
    let mut rng = Rng(1);
    writeln!(out, "version: 1\nparallelism: 8\ncomponents:").expect("write");
    for i in 0..n {
        writeln!(
            out,
            "  - name: c{i:06}\n    command: [\"true\", \"c{i:06}\"]"
        )
        .expect("write");
        let k = i.min(3);
        if k > 0 {
            let mut deps: Vec<usize> = Vec::with_capacity(k);
            while deps.len() < k {
                let d = rng.below(i);
                if !deps.contains(&d) {
                    deps.push(d);
                }
            }
            deps.sort_unstable();
            let names: Vec<String> = deps.iter().map(|d| format!("c{d:06}")).collect();
            writeln!(out, "    depends_on: [{}]", names.join(", ")).expect("write");
        }
        writeln!(out, "    priority: {}", i % 7).expect("write");
    }
    out.flush().expect("flush");
    path
}

/// The sizes to measure: all of them under `cargo bench`; under `cargo test` (which runs
/// each benchmark once, unoptimised, as a smoke test) only the smallest.
fn sizes() -> &'static [usize] {
    if std::env::args().any(|arg| arg == "--bench") {
        &[1_000, 10_000, 100_000]
    } else {
        &[1_000]
    }
}

fn pipeline(c: &mut Criterion) {
    // SAFETY: mi_option_set only stores an integer option.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 50) };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("load_validate_compile_plan");
    for &n in sizes() {
        let path = generate(dir.path(), n);
        group.throughput(Throughput::Elements(n as u64));
        group.sample_size(if n >= 100_000 { 10 } else { 20 });
        group.bench_with_input(BenchmarkId::from_parameter(n), &path, |b, path| {
            // Freeing the result is not part of planning (the CLI leaves it to the OS).
            b.iter_with_large_drop(|| {
                let graph = razar::graph::load(std::slice::from_ref(path)).expect("valid");
                let selected = graph.select(&[]).expect("no targets");
                let plan = razar::plan::build(&graph, &selected, &razar::plan::Options::default());
                black_box((graph, plan))
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("write_plan_json");
    for &n in sizes() {
        let path = generate(dir.path(), n);
        let graph = razar::graph::load(&[path]).expect("valid");
        let selected = graph.select(&[]).expect("no targets");
        let plan = razar::plan::build(&graph, &selected, &razar::plan::Options::default());
        group.throughput(Throughput::Elements(n as u64));
        group.sample_size(if n >= 100_000 { 10 } else { 20 });
        group.bench_with_input(BenchmarkId::from_parameter(n), &plan, |b, plan| {
            b.iter(|| {
                plan.write_json(dir.path(), &mut std::io::sink())
                    .expect("sink")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
