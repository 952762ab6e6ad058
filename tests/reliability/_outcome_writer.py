"""One writer process of the concurrency test: records outcomes through the service layer.

Run as ``python tests/reliability/_outcome_writer.py URL PLAN.json``; prints one JSON line of
counts. Each outcome is its own transaction, exactly as ``POST /v1/outcomes`` runs it. A repeat that
races its first post loses on a unique index; the service answers that as 409 "retry", and this
writer retries as a caller would, until the repeat is answered as a replay.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

from sqlalchemy.exc import IntegrityError, OperationalError

from engine.config import Settings
from engine.db import make_engine
from engine.decisions import record_outcome
from engine.runtime import Runtime
from engine.schemas import OutcomeIn


def main(url: str, plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    engine = make_engine(url)
    runtime = Runtime(Settings(database_url=url, maintenance_seconds=0), engine=engine)
    counts = {"created": 0, "replayed": 0, "retried_races": 0, "retried_busy": 0}
    for decision_id, result, value, key, occurred_at in plan:
        body = OutcomeIn(
            decision_id=decision_id,
            result=result,
            value=value,
            idempotency_key=key,
            occurred_at=dt.datetime.fromisoformat(occurred_at),
        )
        for attempt in range(50):
            try:
                with runtime.session() as session:
                    _, created = record_outcome(session=session, runtime=runtime, outcome_in=body)
                    session.commit()
            except IntegrityError:
                counts["retried_races"] += 1
                continue
            except OperationalError:  # busy, deadlock or serialization failure: back off
                counts["retried_busy"] += 1
                time.sleep(0.01 * (attempt + 1))
                continue
            counts["created" if created else "replayed"] += 1
            break
        else:
            raise RuntimeError(f"outcome of {decision_id} not stored after 50 attempts")
    engine.dispose()
    print(json.dumps(counts))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
