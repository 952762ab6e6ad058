"""An experiment report's plots as SVG (matplotlib, headless): the posterior of each arm's
expected net value, the allocation over time, and cumulative realised value."""

from __future__ import annotations

import io
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from experiments import stats
from experiments.evidence import Evidence
from experiments.report import allocation_over_time, cumulative_value

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["TITLES", "render"]

TITLES = {
    "posterior": "expected net value per arm",
    "allocation": "allocation over time",
    "cumulative": "cumulative realised value",
}
"""Each plot's title, after the experiment's name (the API's and the console's plots alike)."""


@cache
def _pyplot() -> ModuleType:
    """matplotlib's pyplot, imported on the first plot: it adds about 100 MiB to a process, which
    a worker that never draws should not carry."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the service renders to memory
    matplotlib.rcParams["svg.hashsalt"] = "nextbest"  # stable element ids: same data, same bytes
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text (smaller, searchable)
    import matplotlib.pyplot

    return matplotlib.pyplot


def render(name: str, evidence: Evidence, title: str, seed: int = 0) -> str:
    """The plot ``name`` (one of experiments.report.PLOTS) as an SVG document."""
    plt = _pyplot()
    figure = plt.figure(figsize=(7.5, 3.6), layout="constrained")
    try:
        axes = figure.add_subplot()
        {"posterior": _posterior, "allocation": _allocation, "cumulative": _cumulative}[name](
            axes, evidence, seed
        )
        axes.set_title(title, fontsize=10, loc="left")
        return _svg(figure)
    finally:
        plt.close(figure)


def _posterior(axes: Axes, evidence: Evidence, seed: int) -> None:
    values = stats.value_draws(evidence.counts(), evidence.net, np.random.default_rng(seed))
    low, high = np.quantile(values, [0.001, 0.999])
    bins = np.linspace(low, high if high > low else low + 1.0, 80)
    for a, key in enumerate(evidence.arms):
        axes.hist(
            values[:, a],
            bins=bins.tolist(),
            density=True,
            histtype="step",
            linewidth=1.6,
            label=key,
        )
    axes.set_xlabel("expected net value per customer (posterior)")
    axes.set_ylabel("density")
    axes.legend(fontsize=8, frameon=False)


def _allocation(axes: Axes, evidence: Evidence, _: int) -> None:
    points = allocation_over_time(evidence)
    if not points:
        _empty(axes, "no customer enrolled yet")
        return
    x = np.arange(len(points))
    shares = np.array([[p["shares"][k] for k in evidence.arms] for p in points]).T
    axes.stackplot(x, shares, labels=evidence.arms, alpha=0.85)
    planned = np.array([[p["planned"][k] for k in evidence.arms] for p in points]).T
    axes.plot(x, np.cumsum(planned, axis=0)[:-1].T, color="black", linewidth=0.8, linestyle="--")
    axes.set_ylim(0, 1)
    axes.set_xlabel("time (buckets of new customers; dashed: planned shares)")
    axes.set_ylabel("share of new customers")
    axes.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _cumulative(axes: Axes, evidence: Evidence, _: int) -> None:
    points = cumulative_value(evidence)
    if not points:
        _empty(axes, "no result yet")
        return
    x = [p["until"][:16].replace("T", " ") for p in points]
    for key in evidence.arms:
        axes.plot(range(len(x)), [p["arms"][key]["value"] for p in points], label=key)
    ticks = np.linspace(0, len(x) - 1, min(len(x), 4)).astype(int)
    axes.set_xticks(ticks, [x[i] for i in ticks], fontsize=7)
    axes.set_ylabel("cumulative realised net value")
    axes.legend(fontsize=8, frameon=False)


def _empty(axes: Axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
    axes.set_axis_off()


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()
