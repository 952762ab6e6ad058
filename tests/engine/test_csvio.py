"""CSV import and export through the real `nextbest` command and the real database."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, func, select
from typer.testing import CliRunner

from cli import app
from engine.catalog import load_catalog
from engine.csvio import (
    ImportFailed,
    _as_dict,
    _EventParser,
    _parse_row,
    export_events,
    import_csv,
)
from engine.errors import InvalidInput
from engine.models import Customer, ImportRun, Outcome, utcnow
from engine.runtime import Runtime
from engine.triples import spooled_triple, unspooled_triple
from tests.test_api_triples import assert_stats_equal_replay

HEADER = ["customer_id", "experience", "result", "occurred_at", "value", "plan", "tenure_months"]


def write_events(path: Path, n: int, bad: dict[int, dict[str, str]] | None = None) -> Path:
    """n data rows; ``bad`` replaces cells of some rows (0-based data row -> changes)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(n):
            row = {
                "customer_id": f"c-{i % 3000}",
                "experience": ["no_offer", "discount_10", "callback_senior"][i % 3],
                "result": ["churned", "retained", "upgraded"][(i // 3) % 3],
                "occurred_at": f"2026-{1 + i % 10:02d}-{1 + i % 28:02d}T08:30:00Z",
                "value": "" if i % 2 else str(50 + i % 100),
                "plan": ["basic", "plus", "premium"][i % 3000 % 3],
                "tenure_months": str(i % 3000 % 60),
            }
            row.update((bad or {}).get(i, {}))
            writer.writerow([row[c] for c in HEADER])
    return path


def outcomes(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Outcome)).one())


def test_bad_row_in_the_middle_of_100k_imports_nothing(
    tmp_path: Path, business: Any, runtime: Runtime, database_url: str
) -> None:
    path = write_events(tmp_path / "events.csv", 100_000, bad={50_000: {"result": "R11"}})
    result = CliRunner().invoke(app, ["import", str(path), "--db", database_url, "--quiet"])
    assert result.exit_code == 1
    # data row 50,000 (0-based) is physical line 50,002: the header is line 1
    assert "line 50002: unknown result 'R11'" in result.output
    assert "(column result); nothing was imported" in result.output
    assert outcomes(runtime.engine) == 0

    skipped = CliRunner().invoke(
        app, ["import", str(path), "--db", database_url, "--quiet", "--skip-bad"]
    )
    assert skipped.exit_code == 0, skipped.output
    assert "imported 99999 events rows of 100000" in skipped.output
    assert outcomes(runtime.engine) == 99_999
    side = list(csv.reader((tmp_path / "events.csv.rejected.csv").read_text().splitlines()))
    assert side[0][:3] == ["line", "field", "reason"]
    assert side[1][:2] == ["50002", "result"]
    assert "unknown result 'R11'" in side[1][2]
    assert_stats_equal_replay(runtime)


def test_rerun_of_an_imported_file_is_a_no_op(
    tmp_path: Path, business: Any, runtime: Runtime
) -> None:
    path = write_events(tmp_path / "events.csv", 1200)
    first = import_csv(engine=runtime.engine, path=path, kind="events", batch_size=500)
    assert (first.rows_stored, first.batches) == (1200, 3)
    again = import_csv(engine=runtime.engine, path=path, kind="events")
    assert again.already_imported
    assert outcomes(runtime.engine) == 1200


def test_interrupted_import_resumes_after_the_last_committed_batch(
    tmp_path: Path, business: Any, runtime: Runtime
) -> None:
    path = write_events(tmp_path / "events.csv", 1000)
    first_half = write_events(tmp_path / "half.csv", 400)
    # Simulate a crash after 400 rows: store them through the importer, then point the run record
    # at the full file as if those were its committed batches.
    import_csv(engine=runtime.engine, path=first_half, kind="events", batch_size=200)
    from engine.csvio import file_sha256

    with Session(runtime.engine) as session:
        run = session.exec(select(ImportRun)).one()
        run.sha256, run.finished = file_sha256(path), False
        session.add(run)
        session.commit()
    resumed = import_csv(engine=runtime.engine, path=path, kind="events", batch_size=200)
    assert (resumed.rows_resumed, resumed.rows_stored) == (400, 600)
    assert outcomes(runtime.engine) == 1000
    assert_stats_equal_replay(runtime)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["customer_id", "experience", "result"], "line 1: missing column 'occurred_at'"),
        ([*HEADER, "shoe_size"], "line 1: column 'shoe_size' is neither a field"),
        ([*HEADER, "plan"], "line 1: column 'plan' appears twice"),
    ],
)
def test_bad_header(
    tmp_path: Path, business: Any, runtime: Runtime, header: list[str], message: str
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(",".join(header) + "\n")
    with pytest.raises(ImportFailed, match=message.replace("(", r"\(")):
        import_csv(engine=runtime.engine, path=path, kind="events")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"occurred_at": "2026-01-01"}, "needs a time zone"),
        ({"occurred_at": "soon"}, "must be an ISO 8601 time"),
        ({"plan": "gold"}, "'gold' is not a level of plan"),
        ({"tenure_months": "ten"}, "tenure_months must be a number"),
        ({"experience": ""}, "experience is required"),
        ({"value": "NaN"}, "value must be a finite number"),
    ],
)
def test_bad_rows_name_line_and_field(
    tmp_path: Path, business: Any, runtime: Runtime, changes: dict[str, str], message: str
) -> None:
    path = write_events(tmp_path / "events.csv", 10, bad={3: changes})
    with pytest.raises(ImportFailed) as caught:
        import_csv(engine=runtime.engine, path=path, kind="events")
    assert caught.value.line == 5
    assert message in caught.value.message
    assert outcomes(runtime.engine) == 0


def test_ragged_row(tmp_path: Path, business: Any, runtime: Runtime) -> None:
    path = write_events(tmp_path / "events.csv", 3)
    with path.open("a") as handle:
        handle.write("c-9,no_offer,retained,2026-01-01T00:00:00Z,,plus,3,extra\n")
    with pytest.raises(ImportFailed, match="line 5: the row has more cells than the header"):
        import_csv(engine=runtime.engine, path=path, kind="events")


def test_customers_import(tmp_path: Path, business: Any, runtime: Runtime) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(
        "customer_id,name,plan,tenure_months,fraud_flag\n"
        "c-1,Ada Adams,plus,3,false\nc-2,,premium,,true\nc-1,Ada A.,basic,4,\n"
    )
    summary = import_csv(engine=runtime.engine, path=path, kind="customers")
    assert summary.rows_stored == 3
    with Session(runtime.engine) as session:
        c1 = session.get(Customer, "c-1")
        c2 = session.get(Customer, "c-2")
    assert c1 is not None and c1.attributes == {"plan": "basic", "tenure_months": 4.0}
    assert c1.name == "Ada A."
    assert c2 is not None and c2.attributes == {"plan": "premium", "fraud_flag": True}


def test_export_round_trip(
    tmp_path: Path, business: Any, runtime: Runtime, database_url: str
) -> None:
    path = write_events(tmp_path / "events.csv", 300)
    import_csv(engine=runtime.engine, path=path, kind="events")
    buffer = io.StringIO()
    assert export_events(engine=runtime.engine, out=buffer) == 300
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert rows[0]["customer_id"] == "c-0" and rows[0]["occurred_at"] == "2026-01-01T08:30:00Z"
    assert rows[0]["plan"] == "basic" and rows[0]["value"] == "50.0"
    out = tmp_path / "export.csv"
    result = CliRunner().invoke(app, ["export", "events", "--out", str(out), "--db", database_url])
    assert result.exit_code == 0
    assert out.read_bytes().decode() == buffer.getvalue()


def test_keys_cli(database_url: str, runtime: Runtime) -> None:
    created = CliRunner().invoke(
        app, ["keys", "create", "--role", "service", "--name", "crm", "--db", database_url]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    assert key.startswith("nb_")
    listed = CliRunner().invoke(app, ["keys", "list", "--db", database_url])
    assert '"name": "crm"' in listed.stdout
    assert f'"prefix": "{key.split("_")[1]}"' in listed.stdout
    bad = CliRunner().invoke(
        app, ["keys", "create", "--role", "god", "--name", "x", "--db", database_url]
    )
    assert bad.exit_code == 1
    assert "unknown role 'god'" in bad.output


FULL_HEADER = [
    "customer_id",
    "experience",
    "result",
    "occurred_at",
    "value",
    "cost",
    "idempotency_key",
    "plan",
    "tenure_months",
    "monthly_spend",
    "fraud_flag",
    "signup_date",
]
PLAIN = {
    "customer_id": "c-1",
    "experience": "discount_10",
    "result": "retained",
    "occurred_at": "2026-10-01T08:30:00Z",
    "value": "120.5",
    "cost": "",
    "idempotency_key": "",
    "plan": "plus",
    "tenure_months": "14",
    "monthly_spend": "52.5",
    "fraud_flag": "false",
    "signup_date": "2025-03-04",
}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"occurred_at": "2026-10-01T10:30:00+02:00"},
        {"occurred_at": "2026-10-01T08:30:00"},  # naive: an error
        {"occurred_at": "2999-01-01T00:00:00Z"},  # future: an error
        {"occurred_at": "yesterday"},
        {"customer_id": "c 1"},
        {"customer_id": "c/1"},
        {"customer_id": "x" * 129},
        {"customer_id": ""},
        {"experience": "nope"},
        {"result": "R11"},
        {"value": "1e3", "cost": "-4"},
        {"value": "nan"},
        {"value": "1e13"},
        {"cost": "ten"},
        {"idempotency_key": "k" * 200},
        {"idempotency_key": "k" * 201},
        {"plan": "gold"},
        {"plan": " plus"},
        {"plan": "   "},
        {"tenure_months": " 14 "},
        {"tenure_months": "inf"},
        {"tenure_months": "1_000"},
        {"tenure_months": ""},
        {"fraud_flag": "TRUE"},
        {"fraud_flag": "yes"},
        {"fraud_flag": "maybe"},
        {"signup_date": "2025-3-4"},
        {"signup_date": "20250304"},
        {"signup_date": "2025-03-04T10:00"},
    ],
)
def test_fast_row_parser_agrees_with_parse_event(
    changes: dict[str, str], business: Any, runtime: Runtime
) -> None:
    """The import's fast path and parse_event accept the same rows with the same values, and
    reject the same rows with the same message."""
    with runtime.session() as session:
        catalog = load_catalog(session)
    now = utcnow()
    cells = [{**PLAIN, **changes}[name] for name in FULL_HEADER]
    fast = _EventParser(catalog, FULL_HEADER, now)

    def outcome(parse: Any) -> Any:
        try:
            return unspooled_triple(parse(cells))
        except InvalidInput as error:
            return (error.message, error.field)

    def slow(cells: list[str]) -> tuple[Any, ...]:
        return spooled_triple(_parse_row("events", catalog, _as_dict(FULL_HEADER, cells), now))

    assert outcome(fast) == outcome(slow)
