#!/usr/bin/env python3
"""Writes one random DAG twice: as a razar config and as a build.ninja.

Component i (c000000, c000001, ...) depends on up to 3 distinct earlier components, chosen
with a seeded PRNG, so the same arguments always write the same files. benches/plan.rs
generates the same shape in Rust for the criterion bench; benches/compare_ninja.py uses
these files to time `razar plan` against `ninja -n` on identical graphs.

    python3 benches/gen_dag.py --components 100000 --out /tmp/dag
    # -> /tmp/dag/big.yaml, /tmp/dag/big.json, /tmp/dag/build.ninja, /tmp/dag/phony.ninja
"""

import argparse
import json
import os
import random


def edges(n, deps, seed):
    rng = random.Random(seed)
    for i in range(n):
        k = min(i, deps)
        yield i, sorted(rng.sample(range(i), k)) if k else []


def name(i):
    return f"c{i:06d}"


def write_yaml(path, graph):
    with open(path, "w") as out:
        out.write("version: 1\nparallelism: 8\ncomponents:\n")
        for i, deps in graph:
            out.write(f"  - name: {name(i)}\n")
            out.write(f"    command: [\"true\", \"{name(i)}\"]\n")
            if deps:
                out.write("    depends_on: [" + ", ".join(name(d) for d in deps) + "]\n")
            out.write(f"    priority: {i % 7}\n")


def write_json(path, graph):
    components = []
    for i, deps in graph:
        c = {"name": name(i), "command": ["true", name(i)], "priority": i % 7}
        if deps:
            c["depends_on"] = [name(d) for d in deps]
        components.append(c)
    with open(path, "w") as out:
        json.dump({"version": 1, "parallelism": 8, "components": components}, out)


def write_ninja(path, graph, phony):
    with open(path, "w") as out:
        if not phony:
            out.write("rule noop\n  command = :\n\n")
        rule = "phony" if phony else "noop"
        for i, deps in graph:
            inputs = " ".join(name(d) for d in deps)
            out.write(f"build {name(i)}: {rule}" + (f" {inputs}" if inputs else "") + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, default=100_000)
    parser.add_argument("--deps", type=int, default=3, help="dependencies per component")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True, help="directory to write into")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    graph = list(edges(args.components, args.deps, args.seed))
    write_yaml(os.path.join(args.out, "big.yaml"), graph)
    write_json(os.path.join(args.out, "big.json"), graph)
    write_ninja(os.path.join(args.out, "build.ninja"), graph, phony=False)
    write_ninja(os.path.join(args.out, "phony.ninja"), graph, phony=True)


if __name__ == "__main__":
    main()
