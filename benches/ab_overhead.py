#!/usr/bin/env python3
"""Compares razar binaries (say, two commits) on the overhead DAG, side by side with ninja.

Every run of a binary starts from a fresh copy of the same state directory, so history
growing from run to run does not favour one binary; rounds interleave the binaries and
`ninja -j2`. Prints, per runner, the median and best wall time, the median ratio to ninja,
and the median CPU time of the runner's own process (all its threads, children excluded).

Make the reference state directory with the binary that will read it (the history format
changed once: an older binary cannot read a newer directory's history):

    python3 benches/ab_overhead.py --dir /tmp/ab --make-state OLD_BIN=ref-old --boots 100
    python3 benches/ab_overhead.py --dir /tmp/ab --make-state NEW_BIN=ref-new --boots 100
    python3 benches/ab_overhead.py --dir /tmp/ab --rounds 11 OLD_BIN=ref-old NEW_BIN=ref-new

`--make-state` writes the DAG (2,000 `true` tasks, up to 3 dependencies each among the 50
before, as in benches/exec.rs) and a build.ninja to DIR, then boots it BOOTS times with the
binary into DIR/ref-NAME (100 boots fill every history ring).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

NODES = 2000


def prepared_dir(directory):
    """`directory` made absolute, created, and holding the DAG (written if either file is missing)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    if not all(os.path.exists(os.path.join(directory, f)) for f in ("dag.yaml", "build.ninja")):
        write_dag(directory)
    return directory


def require_perf():
    if shutil.which("perf") is None:
        sys.exit("perf is needed (Debian: linux-perf)")


def write_dag(directory):
    """The overhead DAG of benches/exec.rs: same generator, same seed."""
    mask = (1 << 64) - 1
    seed = 0x9E3779B97F4A7C15

    def next_random():
        nonlocal seed
        seed ^= (seed << 13) & mask
        seed ^= seed >> 7
        seed ^= (seed << 17) & mask
        return seed

    yaml = ["version: 1", "state_dir: state", "parallelism: 2", "components:"]
    ninja = ["rule run", "  command = true"]
    for i in range(NODES):
        deps = sorted({i - 1 - (next_random() % min(i, 50)) for _ in range(min(3, i))})
        names = [f"n{d}" for d in deps]
        yaml.append(
            f'  - {{name: n{i}, kind: task, command: ["true"], depends_on: [{", ".join(names)}]}}'
        )
        ninja.append(f"build n{i}: run | {' '.join(names)}")
    with open(os.path.join(directory, "dag.yaml"), "w") as f:
        f.write("\n".join(yaml) + "\n")
    with open(os.path.join(directory, "build.ninja"), "w") as f:
        f.write("\n".join(ninja) + "\n")


def timed(command, cwd):
    """Wall time and the process's own CPU time (read before it is reaped)."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = time.monotonic()
    child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    wall = time.monotonic() - start
    with open(f"/proc/{child.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    if child.wait() != 0:
        sys.exit(f"{command} failed in {cwd}")
    return wall, (int(fields[11]) + int(fields[12])) / ticks


# razar's side of the comparison, run in a state directory holding dag.yaml.
APPLY = ["apply", "-c", "dag.yaml", "--until-ready", "--parallelism", "2"]


def apply(binary, cwd):
    return timed([binary] + APPLY, cwd)


def fresh_copy(reference, work):
    """`work` becomes a copy of the reference state directory, on disk before the run."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(reference, work, symlinks=True)
    os.sync()


def forget_ninja_log(directory):
    """Removes ninja's log, so `ninja -j2` runs every edge again."""
    for leftover in (".ninja_log", ".ninja_deps"):
        try:
            os.remove(os.path.join(directory, leftover))
        except FileNotFoundError:
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, help="working directory (DAG, state copies)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--make-state", metavar="BIN=NAME", help="boot BIN --boots times into DIR/NAME")
    parser.add_argument("--boots", type=int, default=100)
    parser.add_argument("runners", nargs="*", metavar="BIN=NAME", help="binary and the state directory it starts from")
    args = parser.parse_args()
    args.dir = prepared_dir(args.dir)

    if args.make_state:
        binary, name = args.make_state.split("=", 1)
        binary = os.path.abspath(binary)  # it runs in the state directory
        target = os.path.join(args.dir, name)
        os.makedirs(target, exist_ok=True)
        shutil.copy(os.path.join(args.dir, "dag.yaml"), target)
        for _ in range(args.boots):
            apply(binary, target)
        return

    # Each binary runs in its state directory: a relative path is made absolute first.
    runners = [(os.path.abspath(b), n) for b, n in (r.split("=", 1) for r in args.runners)]
    times = {label: ([], []) for label in [f"{b} ({n})" for b, n in runners] + ["ninja -j2"]}
    for _ in range(args.rounds):
        for i, (binary, name) in enumerate(runners):
            copy = os.path.join(args.dir, f"run-{i}")
            fresh_copy(os.path.join(args.dir, name), copy)
            wall, cpu = apply(binary, copy)
            times[f"{binary} ({name})"][0].append(wall)
            times[f"{binary} ({name})"][1].append(cpu)
        forget_ninja_log(args.dir)
        wall, cpu = timed(["ninja", "-j2"], args.dir)
        times["ninja -j2"][0].append(wall)
        times["ninja -j2"][1].append(cpu)

    ninja = statistics.median(times["ninja -j2"][0])
    print(f"{args.rounds} interleaved rounds, {NODES} no-op tasks at parallelism 2\n")
    print("| runner | median | best | median vs ninja | own CPU, median |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, (walls, cpus) in times.items():
        median = statistics.median(walls)
        print(f"| `{label}` | {median:.3f} s | {min(walls):.3f} s | {median / ninja:.2f}× | {statistics.median(cpus):.2f} s |")


if __name__ == "__main__":
    main()
