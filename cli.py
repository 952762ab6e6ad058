"""The ``nextbest`` command: serve, demo, import, export and keys."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer
from sqlalchemy import Engine
from tqdm import tqdm

from engine.config import Settings
from engine.db import make_engine, migrate

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
export_app = typer.Typer(no_args_is_help=True, help="Export stored data as CSV.")
app.add_typer(keys_app, name="keys")
app.add_typer(export_app, name="export")

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: NEXTBEST_DATABASE_URL or ./nextbest.db)"),
]


def _settings(db: str | None) -> Settings:
    if db:
        os.environ["NEXTBEST_DATABASE_URL"] = db
    return Settings()


@contextmanager
def _database(db: str | None) -> Iterator[Engine]:
    """The migrated database of ``--db`` (or the environment), disposed of when done."""
    engine = make_engine(_settings(db).database_url)
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes")] = 1,
) -> None:
    """Serve the HTTP API (migrating the database first)."""
    import uvicorn

    with _database(db):
        pass
    uvicorn.run(
        "api:app_from_env", factory=True, host=host, port=port, workers=workers, log_level="info"
    )


@app.command()
def demo(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes")] = 1,
    seed_only: Annotated[bool, typer.Option(help="Seed the demo business, then exit")] = False,
) -> None:
    """Seed a demo business when the database is empty, print the URLs and keys, then serve."""
    from engine.demo import DEMO_KEYS, seed_demo

    settings = _settings(db)
    with _database(db) as engine:
        created = seed_demo(
            engine=engine, progress=lambda total, desc: tqdm(total=total, desc=desc)
        )
    typer.echo("demo business " + ("created" if created else "already present"))
    base = f"http://{host}:{port}"
    typer.echo(
        f"\n  API         {base}/v1\n  OpenAPI     {base}/docs\n  health      {base}/healthz\n"
    )
    for role, key in DEMO_KEYS.items():
        typer.echo(f"  {role:<9} key  {key}")
    typer.echo("")
    if not seed_only:
        serve(db=settings.database_url, host=host, port=port, workers=workers)


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    kind: Annotated[
        Literal["events", "customers"] | None,
        typer.Option(help="What the file holds (default: from the file name)"),
    ] = None,
    db: DbOption = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Import the good rows; bad ones go to a side file")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000)] = 5000,
    quiet: Annotated[bool, typer.Option(help="No progress bar")] = False,
) -> None:
    """Import events.csv (triples) or customers.csv, streaming, one transaction per batch."""
    from engine.csvio import ImportFailed, import_csv

    chosen = kind or ("customers" if "customer" in path.name.lower() else "events")
    bars: list[tqdm[None]] = []

    def progress(phase: str, total: int) -> Callable[[int], object]:
        unit = "B" if phase == "validate" else "row"
        bar = tqdm(
            total=total, unit=unit, unit_scale=True, desc=phase, disable=quiet, file=sys.stderr
        )
        bars.append(bar)
        return bar.update

    try:
        with _database(db) as engine:
            summary = import_csv(
                engine=engine,
                path=path,
                kind=chosen,
                batch_size=batch_size,
                skip_bad=skip_bad,
                progress=progress,
            )
    except ImportFailed as error:
        raise _fail(error.message) from None
    finally:
        for bar in bars:
            bar.close()
    if summary.already_imported:
        typer.echo(f"{path} was imported already ({summary.rows_resumed} rows); nothing to do")
        return
    typer.echo(
        f"imported {summary.rows_stored} {chosen} rows of {summary.rows_read} in "
        f"{summary.seconds:.1f} s"
        + (f" (resumed after {summary.rows_resumed})" if summary.rows_resumed else "")
        + (
            f"; {summary.rows_rejected} rejected, see {summary.rejected_path}"
            if summary.rows_rejected
            else ""
        )
    )


@export_app.command("events")
def export_events_command(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File (default: stdout)")] = None,
    db: DbOption = None,
) -> None:
    """Write every stored triple as CSV (the format `nextbest import` reads)."""
    from engine.csvio import export_events

    with _database(db) as engine:
        if out is None:
            rows = export_events(engine=engine, out=sys.stdout)
        else:
            with out.open("w", newline="", encoding="utf-8") as handle:
                rows = export_events(engine=engine, out=handle)
            typer.echo(f"exported {rows} events to {out}", err=True)


@app.command()
def simulate(
    seed: Annotated[int, typer.Option(help="Seed of the world and of every policy's draws")] = 1,
    decisions: Annotated[int, typer.Option(min=100, max=2_000_000)] = 20_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Run nextbest's policy and the baselines on the simulated retention world; show regret."""
    from engine.policy import HierarchicalThompson
    from engine.simulate import (
        EpsilonGreedySegment,
        SegmentThompson,
        UniformRandom,
        compare_policies,
        make_world,
    )

    world = make_world(seed)
    engine_policy = HierarchicalThompson(
        specs=world.attributes,
        experiences=[e.key for e in world.experiences],
        net_values=world.net_values,
        order=None,
        control=world.control_index,
        min_exploration=Settings().min_exploration,
    )
    policies = [
        UniformRandom(world),
        EpsilonGreedySegment(world),
        SegmentThompson(world),
        engine_policy,
    ]
    reports = compare_policies(world, policies, n_decisions=decisions, seed=seed)
    uniform = reports[0].regret
    rows = [{**r.as_dict(), "regret_vs_uniform": round(r.regret / uniform, 4)} for r in reports]
    if as_json:
        typer.echo(json.dumps({"seed": seed, "decisions": decisions, "policies": rows}, indent=2))
        return
    columns = [
        ("policy", "policy", "{}"),
        ("total net value", "cumulative_net_value", "{:.0f}"),
        ("total regret", "regret", "{:.0f}"),
        ("vs uniform", "regret_vs_uniform", "{:.3f}"),
        ("pre-drift", "regret_per_decision_pre_drift", "{:.2f}"),
        ("post-drift", "regret_per_decision_post_drift", "{:.2f}"),
        ("early post", "regret_per_decision_early_post_drift", "{:.2f}"),
        ("last", "regret_per_decision_last", "{:.2f}"),
        ("wasted offers", "wasted_offer_share", "{:.3f}"),
    ]
    typer.echo(
        f"seed {seed}, {decisions} decisions, drift at decision "
        f"{reports[0].drift_decision}; regret per decision unless said otherwise"
    )
    typer.echo(" | ".join(title for title, _, _ in columns))
    for row in rows:
        typer.echo(
            " | ".join(
                fmt.format(row[key]) if row[key] is not None else "-" for _, key, fmt in columns
            )
        )


@app.command()
def settle(
    db: DbOption = None,
    batch: Annotated[
        int, typer.Option(min=1, max=100_000, help="Decisions per transaction")
    ] = 5000,
) -> None:
    """Settle decisions whose outcome never arrived to the scale's default result."""
    from sqlmodel import Session

    from engine.catalog import load_catalog
    from engine.models import utcnow
    from engine.settle import settle_due

    total = 0
    with _database(db) as engine:
        while True:
            with Session(engine, expire_on_commit=False) as session:
                settled = settle_due(
                    session=session, catalog=load_catalog(session), now=utcnow(), limit=batch
                )
                session.commit()
            total += settled
            if settled < batch:
                break
    typer.echo(f"settled {total} decisions to the default result")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="agent, marketer, service or admin")],
    name: Annotated[str, typer.Option(help="Who or what uses the key")],
    db: DbOption = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from sqlmodel import Session

    from engine.auth import create_key
    from engine.errors import InvalidInput

    with _database(db) as engine, Session(engine, expire_on_commit=False) as session:
        try:
            row, key = create_key(session=session, name=name, role=role, actor="cli")  # type: ignore[arg-type]
        except InvalidInput as error:
            raise _fail(error.message) from None
        session.commit()
    typer.echo(key)
    typer.echo(
        f"(key {row.id}, role {role}, name {name!r}: store it now, it is not shown again)", err=True
    )


@keys_app.command("list")
def keys_list(db: DbOption = None) -> None:
    """List keys (never their secrets)."""
    from sqlmodel import Session

    from engine.auth import list_keys

    with _database(db) as engine, Session(engine) as session:
        for row in list_keys(session=session):
            state = "revoked" if row.revoked_at else "active"
            typer.echo(
                json.dumps(
                    {
                        "id": row.id,
                        "name": row.name,
                        "role": row.role,
                        "prefix": row.prefix,
                        "state": state,
                    }
                )
            )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
