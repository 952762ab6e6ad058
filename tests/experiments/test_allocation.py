"""Sticky hashing: uniform, the same in every process, and splits by the weights."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from scipy import stats as sps

from experiments.allocation import pick, unit
from tests.conftest import repo_root


def test_units_are_uniform_and_split_by_the_weights() -> None:
    units = np.array([unit("exp-a", f"c-{i}") for i in range(20_000)])
    assert sps.kstest(units, "uniform").pvalue > 0.001
    weights = {"a": 0.2, "b": 0.3, "c": 0.5}
    arms = [pick(["a", "b", "c"], weights, u) for u in units]
    observed = [arms.count(k) for k in "abc"]
    assert sps.chisquare(observed, [4000, 6000, 10_000]).pvalue > 0.001


def test_units_differ_by_experiment_but_not_by_process() -> None:
    assert unit("exp-a", "c-1") != unit("exp-b", "c-1")
    code = "from experiments.allocation import unit; print(repr(unit('exp-a', 'c-1')))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=repo_root(),
        env={"PYTHONHASHSEED": "123", "PYTHONPATH": str(repo_root())},
    )
    assert float(other.stdout) == unit("exp-a", "c-1")
