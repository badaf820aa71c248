#!/usr/bin/env python3
"""Where razar's wall time goes on the overhead DAG, against ninja, from kernel tracepoints.

Runs `razar apply --until-ready --parallelism 2` (each run from a fresh copy of a reference
state directory made by `ab_overhead.py --make-state`) and `ninja -j2` on the same DAG,
interleaved, each under `perf record -a` with the scheduler's process tracepoints and the
`clone3` syscall. Needs `perf` and permission to trace (root, or a low
`kernel.perf_event_paranoid`). Prints the median, over the rounds, of:

- start: the runner's exec → its first child's exec (configuration, state, plan);
- span: first child's exec → last child's exit (the boot itself);
- tail: last child's exit → the runner's exit (checkpoint, snapshot, exit);
- exit→fork: a child's exit → the runner's next fork (mean, µs), how quickly a freed slot
  is used again;
- spawning: the runner's time inside `clone3` (posix_spawn's vfork: the calling thread
  waits until the child has exec'd), in total;
- exits during a spawn: children that exited while the runner waited in `clone3`, and how
  long their exit then went unhandled, in total (ms).

    python3 benches/ab_overhead.py --dir /tmp/ab --make-state target/release/razar=ref --boots 100
    python3 benches/trace_overhead.py --dir /tmp/ab --rounds 5 target/release/razar=ref

A runner may be a wrapper script (say, one that sets environment variables and `exec`s
razar): set TRACE_EXE to the razar binary's file name, so the trace is measured from its exec.
"""

import argparse
import bisect
import os
import re
import shutil
import statistics
import subprocess
import sys

import ab_overhead  # beside this script: run as `python3 benches/NAME.py`

EVENTS = [
    "sched:sched_process_exec",
    "sched:sched_process_exit",
    "sched:sched_process_fork",
    "syscalls:sys_enter_clone3",
    "syscalls:sys_exit_clone3",
]
LINE = re.compile(r"\s*(\S+)\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+(\S+:\S+?):\s*(.*)")


def trace(command, cwd, data):
    subprocess.run(
        ["perf", "record", "-q", "-a", "-o", data]
        + [arg for event in EVENTS for arg in ("-e", event)]
        + ["--"]
        + command,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    script = subprocess.run(
        ["perf", "script", "-i", data], capture_output=True, text=True, check=True
    ).stdout
    events = []
    for line in script.splitlines():
        match = LINE.match(line)
        if match:
            comm, tid, at, kind, rest = match.groups()
            events.append((float(at), comm, int(tid), kind, rest))
    return events


def measure(events, runner_exe):
    """The figures of one traced run (seconds, except where noted)."""
    execs = [e for e in events if e[3] == "sched:sched_process_exec"]
    runner = next(e for e in execs if runner_exe in e[4])
    runner_pid = runner[2]
    # The runner's children: processes its main thread forked that then exec'd (the trace is
    # system-wide; razar's own threads never exec).
    forked = set()
    for e in events:
        if e[3] == "sched:sched_process_fork":
            parent = int(re.search(r" pid=(\d+)", e[4]).group(1))
            if parent == runner_pid:
                forked.add(int(re.search(r"child_pid=(\d+)", e[4]).group(1)))
    children = {e[2] for e in execs if e[2] in forked}
    child_execs = [e[0] for e in execs if e[2] in children]
    child_exits = sorted(
        e[0] for e in events if e[3] == "sched:sched_process_exit" and e[2] in children
    )
    runner_exit = max(
        e[0]
        for e in events
        if e[3] == "sched:sched_process_exit" and e[2] == runner_pid
    )
    forks = sorted(
        e[0]
        for e in events
        if e[3] == "sched:sched_process_fork"
        and int(re.search(r"child_pid=(\d+)", e[4]).group(1)) in children
    )
    latencies = []
    for at in child_exits:
        i = bisect.bisect_right(forks, at)
        if i < len(forks):
            latencies.append(forks[i] - at)
    entered = {}
    spawns = []
    for at, _, tid, kind, _ in events:
        if kind == "syscalls:sys_enter_clone3":
            entered[tid] = at
        elif kind == "syscalls:sys_exit_clone3" and tid in entered:
            spawns.append((entered.pop(tid), at))
    spawns.sort()
    starts = [s for s, _ in spawns]
    delayed = []
    for at in child_exits:
        i = bisect.bisect_right(starts, at) - 1
        if i >= 0 and spawns[i][1] > at:
            delayed.append(spawns[i][1] - at)
    return {
        "start (ms)": 1000 * (min(child_execs) - runner[0]),
        "span (ms)": 1000 * (child_exits[-1] - min(child_execs)),
        "tail (ms)": 1000 * (runner_exit - child_exits[-1]),
        "exit→fork mean (µs)": 1e6 * statistics.mean(latencies),
        "spawning (ms)": 1000 * sum(end - start for start, end in spawns),
        "exits during a spawn": len(delayed),
        "their delay (ms)": 1000 * sum(delayed),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="the directory ab_overhead.py prepared")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("runners", nargs="+", metavar="BIN=REFDIR")
    args = parser.parse_args()
    ab_overhead.require_perf()
    directory = ab_overhead.prepared_dir(args.dir)
    runners = []
    for spec in args.runners:
        binary, _, reference = spec.partition("=")
        runners.append((os.path.abspath(binary), os.path.join(directory, reference)))
    results = {}
    data = os.path.join(directory, "trace.data")
    for _ in range(args.rounds):
        for binary, reference in runners:
            work = os.path.join(directory, "trace-run")
            ab_overhead.fresh_copy(reference, work)
            events = trace([binary] + ab_overhead.APPLY, work, data)
            exe = os.environ.get("TRACE_EXE", os.path.basename(binary))
            results.setdefault(binary, []).append(measure(events, exe))
        ab_overhead.forget_ninja_log(directory)
        ninja = shutil.which("ninja")
        events = trace([ninja, "-j2"], directory, data)
        results.setdefault("ninja -j2", []).append(measure(events, "ninja"))
    keys = list(next(iter(results.values()))[0])
    print("| runner | " + " | ".join(keys) + " |")
    print("| --- |" + " ---: |" * len(keys))
    for runner, runs in results.items():
        cells = [f"{statistics.median(r[k] for r in runs):.1f}" for k in keys]
        print(f"| `{runner}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
