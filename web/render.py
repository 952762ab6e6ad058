"""Templates and the few formatting filters they use (numbers, intervals, times, Markdown).

Autoescaping is on for every template; the only HTML that passes through unescaped is the
Markdown of a rule-set version, rendered with raw HTML disabled.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

NONE = "\u2013"
"""An en dash: what a missing figure shows."""

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False})


def money(value: Any, signed: bool = False) -> str:
    """41.2 -> "41.20" ("+41.20" when signed); None -> an en dash."""
    if value is None:
        return NONE
    return f"{float(value):+,.2f}" if signed else f"{float(value):,.2f}"


def pct(value: Any, digits: int = 0) -> str:
    if value is None:
        return NONE
    return f"{100 * float(value):.{digits}f}%"


def ci(pair: Any, digits: int = 1) -> str:
    if not pair:
        return NONE
    low, high = pair
    return f"{float(low):,.{digits}f} to {float(high):,.{digits}f}"


def when(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return str(value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))


def plain(value: Any) -> str:
    """An attribute value as people write it: true/false, 5 rather than 5.0."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def capitalize_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def markdown(text: str, drop_title: bool = True) -> Markup:
    """Markdown as HTML; the leading "# title" line goes when the page has its own heading."""
    if drop_title and text.startswith("# "):
        text = text.partition("\n")[2]
    return Markup(_markdown.render(text))


def segment_label(segment: str) -> str:
    """ "plan=basic|tenure_months=<12" -> "plan basic · tenure_months <12"; "" -> everyone."""
    if not segment:
        return "everyone"
    return " · ".join(part.replace("=", " ", 1) for part in segment.split("|"))


def build() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(
        money=money,
        pct=pct,
        ci=ci,
        when=when,
        markdown=markdown,
        segment=segment_label,
        plain=plain,
        capitalize_first=capitalize_first,
    )
    return env


__all__ = ["STATIC", "TEMPLATES", "build"]
