"""Rule runtime benchmark: evaluation latency of a 25-rule version and memory across activations.

Prints one JSON object and writes it to bench/results/rules.json. Every figure comes from this run
on this machine. The rule sets are shaped like the compiler's output (conjunctions of equalities,
bin ranges and ``in`` over a segment path of the simulated world's attributes, most specific first,
ending in the default rule ``true``); customers are drawn from the simulated world.

    python bench/rules.py             # 20k evaluations per path
    python bench/rules.py --quick     # 2k evaluations
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.attributes import AttributeSpec  # noqa: E402
from engine.simulate import make_world  # noqa: E402
from rules.language import compile_predicate, parse_rule  # noqa: E402
from rules.runtime import RuleRuntime, RuleSpec  # noqa: E402

OUT = ROOT / "bench" / "results" / "rules.json"


def segment_rules(
    specs: Sequence[AttributeSpec], rng: random.Random, n: int = 25
) -> list[RuleSpec]:
    """n - 1 segment-path rules (2 to 4 attributes each, root attribute first) and a default."""
    by_name = {spec.name: spec for spec in specs}
    rules = []
    for i in range(n - 1):
        names = [
            "plan",
            *rng.sample([s.name for s in specs if s.name != "plan"], rng.randint(1, 3)),
        ]
        parts = []
        for name in names:
            spec = by_name[name]
            if spec.type == "categorical":
                levels = rng.sample(spec.levels, rng.randint(1, 2))
                parts.append(
                    f"{name} == {json.dumps(levels[0])}"
                    if len(levels) == 1
                    else f"{name} in [{', '.join(json.dumps(v) for v in levels)}]"
                )
            elif spec.type == "boolean":
                parts.append(f"{name} == {rng.choice(['true', 'false'])}")
            else:
                edges = [0.0, *spec.bins]
                j = rng.randrange(len(edges))
                low = f"{name} >= {edges[j]:g}"
                parts.append(low if j == len(edges) - 1 else f"{low} and {name} < {edges[j + 1]:g}")
        text = " and ".join(parts)
        rules.append(RuleSpec(f"r{i:02d}", i, parse_rule(text, by_name)))
    rules.append(RuleSpec("default", n, parse_rule("true", by_name)))
    return rules


def python_evaluator(rules: Sequence[RuleSpec]) -> Callable[[Mapping[str, Any]], str | None]:
    """The fallback path: predicates compiled once, first match in (priority, rule_id) order."""
    tests = [
        (rule.rule_id, compile_predicate(rule.condition))
        for rule in sorted(rules, key=lambda r: (r.priority, r.rule_id))
    ]
    return lambda person: next((rule_id for rule_id, test in tests if test(person)), None)


def latency(evaluate: Callable[[Any], object], people: Sequence[Any], n: int) -> dict[str, Any]:
    timings = np.empty(n)
    for i in range(n):
        person = people[i % len(people)]
        start = time.perf_counter()
        evaluate(person)
        timings[i] = time.perf_counter() - start
    us = timings * 1e6
    return {
        "evaluations": n,
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
        "max_us": round(float(us.max()), 1),
        "per_s": round(n / timings.sum()),
    }


def threaded(rt: RuleRuntime, people: Sequence[Any], n: int, threads: int = 4) -> dict[str, Any]:
    """p50/p99 per evaluation while ``threads`` threads evaluate at once (one engine lock)."""
    per_thread: list[list[float]] = [[] for _ in range(threads)]

    def work(k: int) -> None:
        for i in range(n // threads):
            person = people[(i * threads + k) % len(people)]
            start = time.perf_counter()
            rt.evaluate(person)
            per_thread[k].append(time.perf_counter() - start)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - start
    us = np.array([t for times in per_thread for t in times]) * 1e6
    return {
        "threads": threads,
        "evaluations": len(us),
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
        "per_s": round(len(us) / seconds),
    }


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2k evaluations per path")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    args = parser.parse_args()
    n = 2_000 if args.quick else 20_000
    load_at_start = round(os.getloadavg()[0], 2)
    world = make_world(3)
    people = world.sample_customers(5_000, np.random.default_rng(3))
    versions = {v: segment_rules(world.attributes, random.Random(v)) for v in range(1, 7)}
    rt = RuleRuntime()

    memory: dict[str, float] = {"before_runtime_mib": rss_mib()}
    for i in range(1000):
        version = i % len(versions) + 1
        rt.activate(version, versions[version])
        if i + 1 in (1, 50, 200, 1000):
            memory[f"after_{i + 1}_activations_mib"] = rss_mib()
    activation_s = []
    for i in range(20):
        version = i % len(versions) + 1
        start = time.perf_counter()
        rt.activate(version, versions[version])
        activation_s.append(time.perf_counter() - start)

    rt.activate(1, versions[1])
    for person in people[:500]:  # warm both paths
        rt.evaluate(person)
    reference = python_evaluator(versions[1])
    mismatches = sum(
        (fired.rule_id if (fired := rt.evaluate(p)) else None) != reference(p) for p in people
    )
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_1m_at_start": load_at_start,  # the cores are shared
        },
        "rules": len(versions[1]),
        "durable_rules": latency(rt.evaluate, people, n),
        "python_evaluator": latency(reference, people, n),
        "durable_rules_4_threads": threaded(rt, people, n),
        "activation_ms_p50": round(float(np.median(activation_s)) * 1e3, 2),
        "memory": memory,
        "mismatches_vs_python": mismatches,
        "counters": rt.counters(),
    }
    rt.close()
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
