"""The Markdown tables and PNG plots of bench/suite.py's results (bench/results/scale*)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# nextbest scaling benchmark",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM, "
        f"Python {m['python']}, {m['platform']}; load average at start "
        f"{m['load_average_at_start']}, at end {m.get('load_average_at_end')} "
        f"({m['shared']}). Whole run {m.get('seconds')} s. How each figure was produced: "
        "bench/suite.py's docstring (also under `how` in scale.json).",
        "",
        "## Decisions over HTTP (wrk on loopback, 32 connections)",
        "",
        "| database | workers | decisions/s | p50 ms | p99 ms | /livez req/s | ratio | "
        "/healthz req/s | ratio | "
        "worker CPU ms per decision | per /livez | PostgreSQL CPU ms per decision | "
        "RSS per worker MiB | all logged | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["http"].values():
        decided, trivial = run["decisions"], run["trivial_livez"]
        lines.append(
            f"| {run['kind']} | {run['workers']} | {run['decisions_per_s']} | "
            f"{decided['p50_ms']} | {decided['p99_ms']} | "
            f"{trivial['requests_per_s']} | {run['ratio_to_trivial']} | "
            f"{run['healthz']['requests_per_s']} | {run['ratio_to_healthz']} | "
            f"{decided['worker_cpu_ms_per_request']} | {trivial['worker_cpu_ms_per_request']} | "
            f"{decided.get('postgres_cpu_ms_per_request', '-')} | "
            f"{', '.join(str(x) for x in run['worker_rss_mib'])} | {run['all_logged']} | "
            f"{run['load_average_at_start'][0]} |"
        )
    lines += [
        "",
        "## Ingest",
        "",
        "| path | rows | seconds | triples/s | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for name, run in result["ingest"].items():
        lines.append(
            f"| {name} | {run['rows']} | {run['seconds']} | {run['triples_per_s']} | "
            f"{run.get('peak_rss_mib', '')} |"
        )
    compiled = {k: v for k, v in result["compile"].items() if k.isdigit()}
    lines += [
        "",
        "## Rule compilation against logged events",
        "",
        "| events | cells | tree cells | customers | statistics load s | compile s | how |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in compiled.values():
        lines.append(
            f"| {run['events']:,} | {run['cells']:,} | {run['tree_cells']:,} | "
            f"{run['customers']:,} | {run['stats_load_s']} | {run['compile_s']} | {run['how']} |"
        )
    check = result["compile"].get("bulk_path_check")
    if check:
        lines += [
            "",
            f"Bulk path check: the cells of the {check['events']:,}-event file computed through "
            f"engine.stats.increments ({check['cells_bulk']:,} cells) against its real import "
            f"({check['cells_imported']:,} cells): largest relative difference "
            f"{check['max_relative_difference']}.",
        ]
    ratio = result.get("summary", {})
    if ratio:
        lines += ["", "## Targets", ""]
        lines += [f"- {k}: {v}" for k, v in ratio.items()]
    lines += [
        "",
        "## Memory per worker against cells (one worker, after decisions under wrk)",
        "",
        "| events | cells | RSS idle MiB | RSS after decisions MiB |",
        "|---|---|---|---|",
    ]
    for key, run in result["memory"].items():
        if key.isdigit():
            lines.append(
                f"| {run['events']:,} | {run['cells']:,} | {run['rss_idle_mib']} | "
                f"{run['rss_after_decisions_mib']} |"
            )
    return "\n".join(lines) + "\n"


def plots(result: dict[str, Any], out: Path) -> None:
    """scale-http.png, scale-compile.png and scale-memory.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[dict[str, Any]]] = {}
    for run in result["http"].values():
        runs.setdefault(run["kind"], []).append(run)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, items in runs.items():
        items.sort(key=lambda r: r["workers"])
        workers = [r["workers"] for r in items]
        left.plot(workers, [r["decisions_per_s"] for r in items], "o-", label=f"{kind} decisions")
        left.plot(
            workers,
            [r["trivial_livez"]["requests_per_s"] for r in items],
            "s--",
            label=f"{kind} /livez ceiling",
        )
        right.plot(workers, [r["decisions"]["p50_ms"] for r in items], "o-", label=f"{kind} p50")
        right.plot(workers, [r["decisions"]["p99_ms"] for r in items], "s--", label=f"{kind} p99")
    left.set(xlabel="workers", ylabel="requests/s", title="Throughput (wrk, 32 connections)")
    right.set(xlabel="workers", ylabel="ms", title="Decision latency", yscale="log")
    for axis in (left, right):
        axis.set_xticks([1, 2, 4])
    _save(figure, (left, right), out / "scale-http.png")

    compiled = [v for k, v in result["compile"].items() if k.isdigit()]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    events = [r["events"] for r in compiled]
    left.plot(events, [r["compile_s"] for r in compiled], "o-", label="compile")
    left.plot(events, [r["stats_load_s"] for r in compiled], "s--", label="statistics load")
    left.set(xlabel="logged events", ylabel="seconds", xscale="log", title="Against events")
    cells = [r["cells"] for r in compiled]
    right.plot(cells, [r["compile_s"] for r in compiled], "o-", label="compile")
    right.plot(cells, [r["stats_load_s"] for r in compiled], "s--", label="statistics load")
    for r in compiled:
        label = f"{r['events']:,} events, {r['customers']:,} customers"
        right.annotate(label, (r["cells"], r["compile_s"]), fontsize=7)
    right.set(xlabel="stored cells", ylabel="seconds", title="Against cells")
    _save(figure, (left, right), out / "scale-compile.png")

    memory = [v for k, v in result["memory"].items() if k.isdigit()]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(
        [r["cells"] for r in memory], [r["rss_idle_mib"] for r in memory], "s--", label="idle"
    )
    axis.plot(
        [r["cells"] for r in memory],
        [r["rss_after_decisions_mib"] for r in memory],
        "o-",
        label="after decisions",
    )
    axis.set(xlabel="stored cells", ylabel="RSS MiB", title="Memory of one worker")
    _save(figure, (axis,), out / "scale-memory.png")


def _save(figure: Any, axes: tuple[Any, ...], path: Path) -> None:
    import matplotlib.pyplot as plt

    for axis in axes:
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


__all__ = ["markdown", "plots"]
