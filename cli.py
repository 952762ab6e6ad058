"""The ``nextbest`` command: serve, demo, import, export and keys."""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from sqlalchemy import Engine
from tqdm import tqdm

from engine.config import Settings
from engine.db import make_engine, migrate

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
export_app = typer.Typer(no_args_is_help=True, help="Export stored data as CSV.")
app.add_typer(keys_app, name="keys")
rules_app = typer.Typer(no_args_is_help=True, help="Compile, show, diff and activate rule sets.")
app.add_typer(export_app, name="export")
app.add_typer(rules_app, name="rules")
experiments_app = typer.Typer(no_args_is_help=True, help="List, show and report experiments.")
app.add_typer(experiments_app, name="experiments")

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
    # Workers must sign the consoles' session cookies with one key: a per-process key would end
    # a session whenever a request lands on another worker.
    os.environ.setdefault("NEXTBEST_SESSION_SECRET", secrets.token_urlsafe(32))
    with _metrics_directory():
        uvicorn.run(
            "api:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
        )


@contextmanager
def _metrics_directory() -> Iterator[None]:
    """The directory where the workers keep their Prometheus samples (engine.metrics), emptied
    before they start: PROMETHEUS_MULTIPROC_DIR if set, else a temporary one removed at exit. Set
    before anything imports prometheus_client, which reads it on import."""
    import shutil
    import tempfile

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = Path(given or tempfile.mkdtemp(prefix="nextbest-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.db"):
        old.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)


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
    batch_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="Rows per transaction")
    ] = 20_000,
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
    """Settle decisions whose outcome never arrived to the scale's default result (and re-base
    the decay epoch when it is due)."""
    from engine.models import utcnow
    from engine.settle import maintain

    with _database(db) as engine:
        upkeep = maintain(engine, now=utcnow(), batch=batch)
    typer.echo(f"settled {upkeep.settled} decisions to the default result")
    if upkeep.rebased:
        typer.echo("re-based the decay epoch to today")
    for change in upkeep.experiments:
        typer.echo(f"experiment {change}")


SCORE_COLUMNS = (
    "customer_id",
    "name",
    "segment",
    "best_experience",
    "best_net_value",
    "control_experience",
    "control_net_value",
    "gain",
    "uplift",
    "cost",
    "value_at_stake",
)


@app.command()
def score(
    out: Annotated[Path, typer.Argument(help="CSV file to write ('-': standard output)")],
    db: DbOption = None,
    where: Annotated[
        str | None, typer.Option(help='Only customers matching a rule, e.g. plan == "basic"')
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar")] = False,
) -> None:
    """Score every customer: the best experience, its expected gain over the control, uplift,
    cost and value at stake (what GET /v1/worklist ranks by), one CSV row per customer."""
    import csv

    from sqlmodel import func, select

    from engine.errors import NextbestError
    from engine.insights import control_key, customer_chunks, iter_scores, where_predicate
    from engine.models import Customer
    from engine.runtime import Runtime

    with _database(db) as engine:
        runtime = Runtime(_settings(db), engine=engine)
        with runtime.session() as session:
            total = session.exec(select(func.count()).select_from(Customer)).one()
            written = 0
            try:
                predicate = where_predicate(runtime.catalog(session), where)
                control_key(runtime.catalog(session))
            except NextbestError as error:
                raise _fail(error.message) from None
            handle = sys.stdout if str(out) == "-" else out.open("w", newline="")
            try:
                bar = tqdm(
                    total=total, desc="score", unit="customer", disable=quiet, file=sys.stderr
                )
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(SCORE_COLUMNS)

                def chunks() -> Iterator[list[Customer]]:
                    for customers in customer_chunks(session):
                        bar.update(len(customers))
                        yield [c for c in customers if predicate is None or predicate(c.attributes)]

                for row in iter_scores(session=session, runtime=runtime, chunks=chunks()):
                    values = row.as_dict()
                    writer.writerow(["" if values[c] is None else values[c] for c in SCORE_COLUMNS])
                    written += 1
                bar.close()
            except NextbestError as error:
                raise _fail(error.message) from None
            finally:
                if handle is not sys.stdout:
                    handle.close()
    typer.echo(f"scored {written} customers of {total}", err=True)


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


@contextmanager
def _runtime(db: str | None) -> Iterator[Any]:
    from engine.errors import NextbestError
    from engine.runtime import Runtime

    with _database(db) as engine:
        try:
            yield Runtime(_settings(db), engine=engine)
        except NextbestError as error:
            raise _fail(error.message) from None


@app.command()
def evaluate(
    db: DbOption = None,
    days: Annotated[float, typer.Option(min=0.001, help="Decisions of the last N days")] = 90.0,
    where: Annotated[str | None, typer.Option(help="Only decisions whose customer matches")] = None,
    clip: Annotated[float | None, typer.Option(min=1, help="Cap importance weights")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
) -> None:
    """Estimate what every policy would have earned per decision on the logged decisions: the
    current policy, the control, each experience for everyone and each rule-set version (IPS,
    SNIPS and doubly robust, with 95% intervals and effective sample sizes)."""
    import datetime as dt

    from sqlmodel import select

    from engine.evaluation import evaluate as estimate
    from engine.models import utcnow
    from rules.models import RuleSetVersion

    with _runtime(db) as runtime, runtime.session() as session:
        catalog = runtime.catalog(session)
        versions = session.exec(select(RuleSetVersion.version).order_by(RuleSetVersion.version))
        policies = [
            "current",
            "control",
            *(f"experience:{k}" for k in sorted(catalog.experiences)),
            *(f"ruleset:{v}" for v in versions),
        ]
        report = estimate(
            session=session,
            runtime=runtime,
            policies=policies,
            since=utcnow() - dt.timedelta(days=days),
            where=where,
            clip=clip,
        )
    if as_json:
        typer.echo(json.dumps(report, default=str, indent=2))
        return
    used = report["decisions"]
    typer.echo(
        f"{used['used']} decisions with outcomes ({used['overridden']} overridden, "
        f"{used['exploit_only']} exploit-only, {used['filtered']} filtered out); "
        "net value per decision, 95% intervals"
    )
    typer.echo("policy | method | estimate | 95% CI | ESS | n")
    for policy, result in report["policies"].items():
        for method, e in result["estimates"].items():
            if e["status"] == "ok":
                low, high = e["ci95"]
                typer.echo(
                    f"{policy} | {method} | {e['value']:.2f} | {low:.2f} to {high:.2f} | "
                    f"{e['ess']:.0f} | {e['n']}"
                )
            else:
                typer.echo(
                    f"{policy} | {method} | cannot estimate: {e['reason']} | - | - | {e['n']}"
                )
    overrides = report["overrides"]
    if overrides["n"]:
        typer.echo(
            f"agent overrides (left out of the estimates): {overrides['n']} decisions, "
            f"mean net value {overrides['mean_net_value']:.2f}"
        )


@rules_app.command("compile")
def rules_compile(
    db: DbOption = None,
    budget: Annotated[int, typer.Option(min=1, max=200, help="At most this many rules")] = 25,
    min_support: Annotated[
        float, typer.Option(min=0, help="Segments with fewer results fold into their parent")
    ] = 30.0,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the posterior draws")] = 0,
) -> None:
    """Compile what the engine knows into a new (inactive) rule-set version and print it."""
    from rules.compiler import Settings as CompileSettings
    from rules.versions import compile_version

    with _runtime(db) as runtime, runtime.session() as session:
        row = compile_version(
            session=session,
            runtime=runtime,
            settings=CompileSettings(budget=budget, min_support=min_support, seed=seed),
            actor="cli",
        )
        session.commit()
        typer.echo(row.text)
        typer.echo(f"compiled version {row.version}; activate it with: nextbest rules activate")


@rules_app.command("show")
def rules_show(
    version: Annotated[int | None, typer.Argument(help="Version (default: the active one)")] = None,
    db: DbOption = None,
) -> None:
    """Print a rule-set version as Markdown."""
    from rules.versions import active_version, get_version

    with _runtime(db) as runtime, runtime.session() as session:
        row = get_version(session=session, version=version) if version else active_version(session)
        if row is None:
            raise _fail("no rule-set version is active; compile one with: nextbest rules compile")
        typer.echo(row.text)


@rules_app.command("diff")
def rules_diff(
    a: Annotated[int, typer.Argument(help="From version")],
    b: Annotated[int, typer.Argument(help="To version")],
    db: DbOption = None,
) -> None:
    """What changed between two versions: rules added, removed and changed."""
    from rules.compiler import sentence
    from rules.versions import diff, get_version

    with _runtime(db) as runtime, runtime.session() as session:
        names = {k: e.name for k, e in runtime.catalog(session).experiences.items()}
        changes = diff(
            get_version(session=session, version=a), get_version(session=session, version=b)
        )
        for title, key in (("added", "added"), ("removed", "removed")):
            for rule in changes[key]:
                typer.echo(f"{title}: {sentence(rule, names)}")
        for change in changes["changed"]:
            typer.echo(f"changed: {sentence(change['before'], names)}")
            typer.echo(f"     to: {sentence(change['after'], names)}")
        before, after = changes["metrics"]["before"], changes["metrics"]["after"]
        typer.echo(
            f"rules {before['rules']} -> {after['rules']}; value loss "
            f"{before['value_loss_pct']:.2f}% -> {after['value_loss_pct']:.2f}%"
        )


@rules_app.command("activate")
def rules_activate(
    version: Annotated[int, typer.Argument(help="Version to activate (an older one rolls back)")],
    db: DbOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Make a version the one decisions follow, after showing what it would have earned on the
    logged decisions beside the active version (doubly robust estimates, 95% intervals)."""
    import datetime as dt

    from engine.evaluation import evaluate
    from engine.models import utcnow
    from rules.versions import activate, active_version, get_version

    with _runtime(db) as runtime, runtime.session() as session:
        get_version(session=session, version=version)
        current = active_version(session)
        policies = [f"ruleset:{version}"]
        if current is not None and current.version != version:
            policies.append(f"ruleset:{current.version}")
        report = evaluate(
            session=session,
            runtime=runtime,
            policies=policies,
            since=utcnow() - dt.timedelta(days=90),
        )
        for policy, result in report["policies"].items():
            e = result["estimates"]["dr"]
            shown = (
                f"{e['value']:.2f} per decision (95% CI {e['ci95'][0]:.2f} to {e['ci95'][1]:.2f}, "
                f"ESS {e['ess']:.0f})"
                if e["status"] == "ok"
                else f"cannot estimate: {e['reason']}"
            )
            typer.echo(f"{policy}: {shown}")
        if not yes and not typer.confirm(f"activate version {version}?"):
            raise typer.Exit(code=1)
        activate(session=session, version=version, actor="cli")
        session.commit()
    typer.echo(f"version {version} is active")


@experiments_app.command("list")
def experiments_list(
    db: DbOption = None,
    status: Annotated[str | None, typer.Option(help="Only experiments in this status")] = None,
) -> None:
    """One line per experiment: key, status, allocation, arms and name."""
    from experiments.service import list_experiments

    with _runtime(db) as runtime, runtime.session() as session:
        rows = list_experiments(session=session, status=status, limit=10_000, after=None)
    if not rows:
        typer.echo("no experiments")
    for row in rows:
        arms = ", ".join(f"{k} {w:.0%}" for k, w in row.weights.items())
        typer.echo(f"{row.key:<24} {row.status:<10} {row.allocation:<9} {arms}  {row.name}")


@experiments_app.command("show")
def experiments_show(
    key: Annotated[str, typer.Argument(help="Experiment key")], db: DbOption = None
) -> None:
    """The definition, status history and conclusion as JSON."""
    from experiments.schemas import ExperimentPublic
    from experiments.service import get_experiment

    with _runtime(db) as runtime, runtime.session() as session:
        row = get_experiment(session=session, key=key)
        typer.echo(
            ExperimentPublic.model_validate(row, from_attributes=True).model_dump_json(indent=2)
        )


@experiments_app.command("report")
def experiments_report(
    key: Annotated[str, typer.Argument(help="Experiment key")],
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
    plots: Annotated[
        Path | None, typer.Option(help="Write the report's SVG plots into this folder")
    ] = None,
) -> None:
    """Per arm: customers, results, expected net value with CI, uplift, P(best), expected loss;
    the sample-ratio test and the stopping rule."""
    from experiments import plots as plotting
    from experiments.evidence import load_evidence
    from experiments.report import PLOTS, build_report
    from experiments.service import get_experiment

    with _runtime(db) as runtime, runtime.session() as session:
        row = get_experiment(session=session, key=key)
        catalog = runtime.catalog(session)
        evidence = load_evidence(session, catalog, row)
        report = build_report(session=session, catalog=catalog, row=row, evidence=evidence)
        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
            for name in PLOTS:
                (plots / f"{key}-{name}.svg").write_text(
                    plotting.render(name, evidence, title=f"{row.name}: {name}")
                )
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    typer.echo(f"{report.name} ({report.key}): {report.status}, {report.allocation} allocation")
    typer.echo(
        f"{'arm':<20} {'customers':>9} {'results':>8} {'net value':>10} {'90% CI':>19} "
        f"{'uplift':>8} {'P(best)':>8} {'exp. loss':>9}"
    )
    for arm in report.arms:
        low, high = arm["ci90"]
        uplift = f"{arm['uplift']['mean']:+.2f}" if arm["uplift"] else "control"
        typer.echo(
            f"{arm['experience']:<20} {arm['customers']:>9} {arm['results']:>8} "
            f"{arm['expected_net_value']:>10.2f} {f'{low:.2f} to {high:.2f}':>19} {uplift:>8} "
            f"{arm['p_best']:>8.3f} {arm['expected_loss']:>9.3f}"
        )
    if report.sample_ratio["warning"]:
        typer.echo(f"WARNING: {report.sample_ratio['warning']}")
    stopping = report.stopping
    typer.echo(
        f"stopping rule: {'met: ' + stopping['reason'] if stopping['stop_now'] else 'not met'}"
    )
    if report.conclusion:
        c = report.conclusion
        typer.echo(f"concluded by {c['by']} on {c['at'][:10]}: {c['decision']} ({c['note']})")


# Reliability: verify, backup, restore ----------------------------------------------------------


@app.command()
def verify(
    db: DbOption = None,
    repair: Annotated[
        bool, typer.Option(help="Replace drifted statistics by the replay of the log")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Recompute the statistics from the result log and report every cell that drifted (exit 1
    when one did and --repair was not given)."""
    from sqlmodel import Session

    from engine.integrity import verify as verify_cells

    with _database(db) as engine, Session(engine, expire_on_commit=False) as session:
        report = verify_cells(session=session, repair=repair)
        session.commit()
    if as_json:
        typer.echo(json.dumps(report.as_dict(), default=str))
    else:
        typer.echo(
            f"{report.results} results, {report.cells_stored} cells stored, "
            f"{report.cells_replayed} from the replay: {len(report.drift)} drifted"
        )
        for cell in report.drift:
            typer.echo(
                f"  drift {cell.segment} x {cell.experience} x exposure {cell.exposure_bucket}"
                f" x {cell.level}: stored count {cell.stored_count:.6g},"
                f" replayed {cell.replayed_count:.6g}"
            )
        if report.repaired:
            typer.echo(f"repaired {len(report.drift)} cells from the log")
    if report.drift and not report.repaired:
        raise typer.Exit(code=1)


def _sqlite_file_operation(db: str | None, operation: Callable[[str], Any]) -> Any:
    """Run ``operation(url)`` on a SQLite database; on PostgreSQL print how its own tools do it
    (exit 2), and turn a refusal into an error message (exit 1)."""
    from engine.backup import POSTGRES_HELP, sqlite_path
    from engine.errors import NextbestError

    url = _settings(db).database_url
    if sqlite_path(url) is None:
        typer.echo(POSTGRES_HELP)
        raise typer.Exit(code=2)
    try:
        return operation(url)
    except NextbestError as error:
        raise _fail(error.message) from None


@app.command()
def backup(
    path: Annotated[Path, typer.Argument(dir_okay=False, help="The backup file to write")],
    db: DbOption = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing backup file")] = False,
) -> None:
    """Back up a SQLite database while the service runs (PostgreSQL: prints how with pg_dump)."""
    from engine.backup import backup as backup_database

    report = _sqlite_file_operation(
        db, lambda url: backup_database(url=url, target=path, force=force)
    )
    typer.echo(
        f"backed up to {report.path}: {report.bytes} bytes, {report.tables} tables, "
        f"{report.results} results, integrity {report.integrity}"
    )


@app.command()
def restore(
    path: Annotated[Path, typer.Argument(dir_okay=False, help="The backup file to restore")],
    db: DbOption = None,
    force: Annotated[bool, typer.Option(help="Replace a database that holds data")] = False,
) -> None:
    """Restore a SQLite backup (stop the service first; PostgreSQL: prints how with
    pg_restore)."""
    from engine.backup import restore as restore_database

    report = _sqlite_file_operation(
        db, lambda url: restore_database(url=url, source=path, force=force)
    )
    typer.echo(
        f"restored {report.path} from {path}: {report.tables} tables, {report.results} results, "
        f"integrity {report.integrity}"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
