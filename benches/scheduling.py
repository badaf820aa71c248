#!/usr/bin/env python3
"""Scheduling comparison: razar's strategies against ninja, side by side in one run.

For every family of benches/families.py at each parallelism:
  1. razar learns: one priming `razar apply --until-ready` (priority order, no history yet);
  2. `razar bench --runs R --strategies priority,critical-path` boots the stack R times per
     strategy (interleaved) and reports medians, the lower bound and the predicted makespan;
  3. each ninja (Debian's and PyPI's) runs the same `sleep` commands from build.ninja: one
     priming build (so .ninja_log has the timings), then R timed builds (outputs removed,
     .ninja_log kept).
Then the planning cost of a critical-path plan for a 100k-component configuration.

Usage: benches/scheduling.py --razar target/release/razar --ninja /usr/bin/ninja
           --ninja /path/to/venv/bin/ninja [--runs 3] [--jobs 2,4] [--json FILE]
"""

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FAMILIES = ["layered", "forkjoin", "chainfan", "abzu"]


def run(cmd, cwd, capture=True):
    out = subprocess.run(cmd, cwd=cwd, capture_output=capture, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


def ninja_runs(ninja, cwd, jobs, runs):
    def clean():
        shutil.rmtree(os.path.join(cwd, "out"), ignore_errors=True)
        os.makedirs(os.path.join(cwd, "out"))

    for f in (".ninja_log", ".ninja_deps"):
        if os.path.exists(os.path.join(cwd, f)):
            os.remove(os.path.join(cwd, f))
    clean()
    run([ninja, f"-j{jobs}"], cwd)  # priming: .ninja_log now holds every edge's duration
    times = []
    for _ in range(runs):
        clean()
        start = time.monotonic()
        run([ninja, f"-j{jobs}"], cwd)
        times.append((time.monotonic() - start) * 1000)
    return times


def family_row(args, family, jobs, ninjas):
    with tempfile.TemporaryDirectory() as d:
        run([sys.executable, os.path.join(HERE, "families.py"), family, d, "--seed", str(args.seed)], d)
        razar = os.path.abspath(args.razar)
        run([razar, "apply", "--until-ready", "--parallelism", str(jobs)], d)
        report = json.loads(run([razar, "bench", "--runs", str(args.runs), "--parallelism", str(jobs),
                                 "--strategies", args.strategies, "--json"], d))
        by = {s["strategy"]: s for s in report["strategies"]}
        row = {
            "family": family,
            "jobs": jobs,
            "components": report["components"],
            "lower_bound_ms": report["lower_bound_ms"],
            "critical_path_ms": by["critical-path"]["median_ms"],
            "critical_path_runs": by["critical-path"]["runs_ms"],
            "predicted_ms": by["critical-path"]["predicted_ms"],
            "priority_ms": by["priority"]["median_ms"],
            "ninja": {},
        }
        if "explore" in by:
            row["explore_ms"] = by["explore"]["median_ms"]
            row["explore_predicted_ms"] = by["explore"]["predicted_ms"]
        for label, ninja in ninjas:
            row["ninja"][label] = statistics.median(ninja_runs(ninja, d, jobs, args.runs))
        return row


def planning_cost(razar, n=100_000, seed=1):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "razar.yaml")
        with open(path, "w") as f:
            f.write("version: 1\nparallelism: 4\nstate_dir: .razar\ncomponents:\n")
            for i in range(n):
                f.write(f"  - name: t{i}\n    kind: task\n    command: [\"true\"]\n"
                        f"    estimate: {rng.randint(10, 500)}ms\n")
                if i:
                    deps = sorted({f"t{rng.randint(max(0, i - 50), i - 1)}" for _ in range(rng.randint(1, 3))})
                    f.write(f"    depends_on: [{', '.join(deps)}]\n")
        times = {}
        for fmt in ("json",):
            best = None
            for _ in range(3):
                start = time.monotonic()
                subprocess.run([razar, "plan", "-c", path, "--strategy", "critical-path", "--format", fmt],
                               cwd=d, stdout=subprocess.DEVNULL, check=True)
                took = time.monotonic() - start
                best = took if best is None else min(best, took)
            times[fmt] = best
        start = time.monotonic()
        subprocess.run([razar, "validate", "-c", path], cwd=d, stdout=subprocess.DEVNULL, check=True)
        times["validate"] = time.monotonic() - start
        return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--razar", required=True)
    p.add_argument("--ninja", action="append", default=[])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--jobs", default="2,4")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--json")
    p.add_argument("--strategies", default="priority,critical-path",
                   help="razar strategies to bench (must include priority and critical-path; add explore)")
    p.add_argument("--skip-planning", action="store_true")
    p.add_argument("--planning-only", action="store_true")
    args = p.parse_args()
    ninjas = []
    for path in args.ninja:
        version = run([path, "--version"], ".").strip()
        ninjas.append((f"ninja {version}", path))
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.1f}; razar {args.razar}; runs {args.runs}")
    rows = []
    if args.planning_only:
        args.jobs = ""
    for jobs in [int(j) for j in args.jobs.split(",") if j]:
        for family in args.families.split(","):
            row = family_row(args, family, jobs, ninjas)
            rows.append(row)
            ninja_cols = " | ".join(f"{v / 1000:.3f} s ({row['critical_path_ms'] / v:.2f}×)"
                                    for v in row["ninja"].values())
            print(f"| {family} | {jobs} | {row['components']} | {row['lower_bound_ms'] / 1000:.3f} s "
                  f"| {row['critical_path_ms'] / 1000:.3f} s | {row['critical_path_ms'] / row['lower_bound_ms']:.3f} "
                  f"| {row['priority_ms'] / 1000:.3f} s ({row['priority_ms'] / row['critical_path_ms']:.2f}×) "
                  f"| {ninja_cols} | {row['predicted_ms'] / 1000:.3f} s "
                  f"({(row['predicted_ms'] - row['critical_path_ms']) / row['critical_path_ms'] * 100:+.1f}%) |",
                  flush=True)
            if "explore_ms" in row:
                print(f"|   explore: {row['explore_ms'] / 1000:.3f} s measured, "
                      f"{row['explore_predicted_ms'] / 1000:.3f} s predicted |", flush=True)
    ratios = [r["critical_path_ms"] / r["lower_bound_ms"] for r in rows]
    if ratios:
        print(f"median critical-path / lower bound: {statistics.median(ratios):.3f} (max {max(ratios):.3f}); "
              f"load {os.getloadavg()[0]:.1f}")
    result = {"rows": rows, "ninjas": [n[0] for n in ninjas]}
    if not args.skip_planning:
        cost = planning_cost(os.path.abspath(args.razar))
        result["planning_100k_s"] = cost
        print(f"100k components: `razar plan --strategy critical-path --format json` best of 3 "
              f"{cost['json']:.3f} s (of which loading alone, `razar validate`: {cost['validate']:.3f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
