#!/usr/bin/env python3
"""Where the CPU goes on the overhead DAG, razar against ninja, from sampled call stacks.

On a 2-core machine running a 2,000-task DAG at parallelism 2, the children keep both cores
busy, so every millisecond of CPU the runner spends (on any of its threads) lengthens the
boot by about half a millisecond: the wall-time ratio to ninja follows the runners' CPU. This
script runs `razar apply --until-ready --parallelism 2` (each run from a fresh copy of a
reference state directory made by `ab_overhead.py --make-state`) and `ninja -j2` under
`perf record -g -a`, interleaved, and splits the CPU time of every process involved:

- the runner's own threads, by what they were doing (categories below);
- the children before their exec (the runner's vfork copies: signal resets, file actions);
- the children themselves (`true` under razar; `/bin/sh -c true` under ninja);
- idle: a core with nothing to run (the runner's start and tail leave one core idle, and so
  does a slot the runner is slow to refill).

Twice the wall time is about the sum of all of these (plus other processes' CPU).

razar's main thread is split by the first of its frames that names a part of razar, so build
the binary with frame pointers for meaningful stacks (std's own frames may still be cut):

    RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release --target-dir target/fp
    python3 benches/cpu_budget.py --dir /tmp/ab --rounds 3 target/fp/release/razar=ref

Needs `perf` and permission to trace (root, or a low `kernel.perf_event_paranoid`). Prints
the median CPU milliseconds per category over the rounds, at the sampling rate's resolution.
"""

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys

import ab_overhead  # beside this script: run as `python3 benches/NAME.py`

FREQUENCY = 4999

# Threads razar names, by the work they do (a thread's name is its comm).
THREADS = [
    ("sled-io", "sled: its I/O and epoch threads"),
    ("razar-flush", "sled: applying checkpoints"),
    ("razar-state", "razar_state.json writer"),
]

# The main thread's work: the first key (in this order) that one of razar's frames names.
MAIN = [
    ("Store::close", "tail: last checkpoint, final snapshot"),
    ("Recorder", "recorder: journal and staging"),
    ("report::", "reporter: terminal lines"),
    ("Watch::run", "spawning and reaping"),
    ("process::spawn", "spawning and reaping"),
    ("Run::", "scheduler"),
    ("graph::load", "start: configuration"),
    ("config::", "start: configuration"),
    ("learned::", "start: planning"),
    ("plan::", "start: planning"),
    ("crown::", "start: planning"),
    ("Store::open", "start: opening the state"),
    ("state::", "start: opening the state"),
]

# Syscalls of a stack without a recognisable frame (libc's own frames cut the chain).
SYSCALLS = [
    ("clone3", "spawning and reaping"),
    ("__spawni", "spawning and reaping"),
    ("__spawnix", "spawning and reaping"),
    ("pidfd", "spawning and reaping"),
    ("waitid", "spawning and reaping"),
    ("mmap", "spawning and reaping"),
    ("munmap", "spawning and reaping"),
    ("sigprocmask", "spawning and reaping"),
    ("getrlimit", "spawning and reaping"),
    ("prlimit", "spawning and reaping"),
    ("path_openat", "spawning and reaping"),
    ("epoll", "scheduler"),
    ("tokio::runtime", "scheduler"),
]


def record(command, cwd, data):
    """Samples every CPU while `command` runs; returns the samples: (comm, pid, tid, frames)."""
    subprocess.run(
        ["perf", "record", "-q", "-g", "-a", "-F", str(FREQUENCY), "-o", data, "--"] + command,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    text = subprocess.run(
        ["perf", "script", "-i", data, "-F", "comm,pid,tid,ip,sym"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    samples = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if not lines:
            continue
        head = re.match(r"\s*(.+?)\s+(\d+)/(\d+)\s*$", lines[0])
        if head is None:
            continue
        frames = [re.sub(r"\+0x[0-9a-f]+$", "", line.strip().split(None, 1)[-1]) for line in lines[1:]]
        samples.append((head.group(1), int(head.group(2)), int(head.group(3)), frames))
    return samples


def split(samples, exe):
    """CPU milliseconds by category for one run of the runner named `exe`."""
    runner = next((pid for comm, pid, tid, _ in samples if comm == exe and pid == tid), None)
    if runner is None:
        sys.exit(f"no sample of `{exe}`: is it the runner's file name?")
    out = collections.Counter()
    for comm, pid, tid, frames in samples:
        if pid == runner:
            out[category(comm, pid == tid, frames, exe)] += 1
        elif comm == exe:
            out["children before exec"] += 1
        elif comm in ("true", "sh"):
            out["children"] += 1
        elif pid == 0:
            out["idle (a core with nothing to run)"] += 1
    return {key: count * 1000 / FREQUENCY for key, count in out.items()}


def category(comm, main, frames, exe):
    if exe == "ninja":
        return "runner: ninja"
    for prefix, name in THREADS:
        if comm.startswith(prefix):
            return name
    if not main:
        return "other razar threads (history, snapshot reads)"
    ours = [frame for frame in frames if "razar::" in frame]
    for key, name in MAIN:
        if any(key in frame for frame in ours):
            return name
    for frame in frames:
        for key, name in SYSCALLS:
            if key in frame:
                return name
    return "main thread: unattributed"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="the directory ab_overhead.py prepared")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("runner", metavar="BIN=REFDIR")
    args = parser.parse_args()
    ab_overhead.require_perf()
    directory = ab_overhead.prepared_dir(args.dir)
    binary, _, reference = args.runner.partition("=")
    binary = os.path.abspath(binary)
    reference = os.path.join(directory, reference)
    data = os.path.join(directory, "budget.data")
    runs = {"razar": [], "ninja -j2": []}
    for _ in range(args.rounds):
        work = os.path.join(directory, "budget-run")
        ab_overhead.fresh_copy(reference, work)
        samples = record([binary] + ab_overhead.APPLY, work, data)
        runs["razar"].append(split(samples, os.path.basename(binary)[:15]))
        ab_overhead.forget_ninja_log(directory)
        runs["ninja -j2"].append(split(record([shutil.which("ninja"), "-j2"], directory, data), "ninja"))
    os.remove(data)
    for runner, results in runs.items():
        keys = sorted({key for result in results for key in result})
        rows = [(key, statistics.median(result.get(key, 0.0) for result in results)) for key in keys]
        own = sum(ms for key, ms in rows if not key.startswith(("children", "idle")))
        print(f"\n{runner}: runner's own CPU {own:.0f} ms (median per category, {args.rounds} rounds)\n")
        print("| where | CPU ms |")
        print("| --- | ---: |")
        for key, ms in sorted(rows, key=lambda row: -row[1]):
            print(f"| {key} | {ms:.0f} |")


if __name__ == "__main__":
    main()
