#!/usr/bin/env python3
"""Times `razar plan` against `ninja -n` on the same DAG, in one run, and prints the ratio.

Writes the DAG with benches/gen_dag.py (a razar config, and a build.ninja with one no-op
edge per component plus a variant with phony edges), then times

    razar plan -c big.yaml --format json > /dev/null
    ninja -n -f build.ninja > /dev/null      (plans and "runs" every no-op edge)
    ninja -n -f phony.ninja > /dev/null      (phony edges: loads and checks the graph)

with hyperfine when it is installed (apt-get install hyperfine ninja-build), else with a
timing loop, and measures peak RSS with /usr/bin/time -v. Ratios below 1 mean razar is
faster.

    cargo build --release
    python3 benches/compare_ninja.py --components 100000
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_dag  # noqa: E402


def default_razar():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "target"))
    return os.path.join(target, "release", "razar")


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPUs, {model}, load average {load:.2f}"


def with_hyperfine(commands, runs, workdir):
    export = os.path.join(workdir, "hyperfine.json")
    args = ["hyperfine", "--warmup", "1", "--runs", str(runs), "--export-json", export,
            "--style", "basic"]
    for name, command in commands:
        args += ["--command-name", name, command]
    subprocess.run(args, cwd=workdir, check=True)
    with open(export) as f:
        results = json.load(f)["results"]
    return {r["command"]: (r["mean"], r["stddev"] or 0.0, r["min"]) for r in results}


def with_loop(commands, runs, workdir):
    out = {}
    for name, command in commands:
        subprocess.run(command, shell=True, cwd=workdir, check=True)  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(command, shell=True, cwd=workdir, check=True)
            times.append(time.perf_counter() - start)
        stdev = statistics.stdev(times) if len(times) > 1 else 0.0
        out[name] = (statistics.mean(times), stdev, min(times))
        print(f"{name}: mean {out[name][0]:.3f} s ± {stdev:.3f} s over {runs} runs")
    return out


def peak_rss_mb(command, workdir):
    """Peak resident memory of `command` (a shell command line), in MB."""
    if not os.path.exists("/usr/bin/time"):
        return None
    result = subprocess.run(["/usr/bin/time", "-v", "sh", "-c", command], cwd=workdir,
                            capture_output=True, text=True, check=True)
    for line in result.stderr.splitlines():
        if "Maximum resident set size" in line:
            return int(line.split(":")[1]) / 1024
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--razar", default=default_razar(), help="razar binary (release)")
    parser.add_argument("--keep", help="write the DAG here instead of a temp dir")
    args = parser.parse_args()
    razar = os.path.abspath(args.razar)
    if not os.path.exists(razar):
        sys.exit(f"no razar binary at {razar}: run `cargo build --release` or pass --razar")
    if not shutil.which("ninja"):
        sys.exit("ninja is not installed (apt-get install ninja-build)")

    workdir = args.keep or tempfile.mkdtemp(prefix="razar-vs-ninja-")
    os.makedirs(workdir, exist_ok=True)
    graph = list(gen_dag.edges(args.components, 3, 1))
    gen_dag.write_yaml(os.path.join(workdir, "big.yaml"), graph)
    gen_dag.write_ninja(os.path.join(workdir, "build.ninja"), graph, phony=False)
    gen_dag.write_ninja(os.path.join(workdir, "phony.ninja"), graph, phony=True)
    edges = sum(len(deps) for _, deps in graph)
    size = os.path.getsize(os.path.join(workdir, "big.yaml")) / 1e6
    print(f"DAG: {args.components} components, {edges} dependencies; big.yaml {size:.1f} MB")
    print(f"machine: {machine()}")

    commands = [
        ("razar plan", f"{razar} plan -c big.yaml --format json > /dev/null"),
        ("ninja -n (no-op edges)", "ninja -n -f build.ninja > /dev/null"),
        ("ninja -n (phony edges)", "ninja -n -f phony.ninja > /dev/null"),
    ]
    runner = with_hyperfine if shutil.which("hyperfine") else with_loop
    results = runner(commands, args.runs, workdir)

    print()
    razar_mean = results["razar plan"][0]
    for name, command in commands:
        mean, stdev, best = results[name]
        rss = peak_rss_mb(command, workdir)
        rss_text = f", peak RSS {rss:.0f} MB" if rss is not None else ""
        ratio = razar_mean / mean
        print(f"{name:24} mean {mean:.3f} s ± {stdev:.3f} s (min {best:.3f} s){rss_text}; "
              f"razar/this = {ratio:.2f}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
