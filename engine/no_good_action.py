"""Groups with no good action: segments where doing nothing wins, or every offer loses money.

Read off the segment tree report (engine.insights.segment_insights): at each node, the control
wins when its expected net value is the highest of all experiences there (no offer pays for its
cost in uplift), and every offer loses money when each non-control experience's expected net
value is below zero. Both tell a marketer where to stop spending; P(best) of the control says how
sure the engine is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SURE = 0.8
"""P(best) of the control from which a finding is settled rather than still learning."""


def no_good_action(report: Mapping[str, Any], *, control: str) -> list[dict[str, Any]]:
    """Nodes of ``report`` (GET /v1/insights/segments) where the ``control`` experience wins or
    every other experience has a negative expected net value, shallowest first."""
    found = []
    for node in report["nodes"]:
        by_key = {e["experience"]: e for e in node["experiences"]}
        base = by_key.get(control)
        offers = [e for key, e in by_key.items() if key != control]
        if base is None or not offers:
            continue
        best = max(offers, key=lambda e: e["expected_net_value"])
        control_wins = base["expected_net_value"] >= best["expected_net_value"]
        all_lose = all(e["expected_net_value"] < 0 for e in offers)
        if not (control_wins or all_lose):
            continue
        reasons = []
        if control_wins:
            reasons.append("no offer beats doing nothing")
        if all_lose:
            reasons.append("every offer loses money")
        found.append(
            {
                "segment": node["segment"],
                "depth": node["depth"],
                "control": control,
                "control_net_value": base["expected_net_value"],
                "control_ci90": base["ci90"],
                "control_p_best": base["p_best"],
                "best_offer": best["experience"],
                "best_offer_net_value": best["expected_net_value"],
                "best_offer_ci90": best["ci90"],
                "best_offer_gain": round(
                    best["expected_net_value"] - base["expected_net_value"], 4
                ),
                "control_wins": control_wins,
                "all_offers_lose": all_lose,
                "settled": control_wins and base["p_best"] >= SURE,
                "n": round(sum(e["n"] for e in node["experiences"]), 3),
                "reasons": reasons,
            }
        )
    return found


__all__ = ["SURE", "no_good_action"]
