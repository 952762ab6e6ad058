"""The rule language's vocabulary: value types, AST nodes and errors.

Shared by the parser (``rules._parser``) and the public module (``rules.language``), which
re-exports every public name here; import them from ``rules.language``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Literal, TypeAlias

from engine.errors import InvalidInput

Op = Literal["==", "!=", "<", "<=", ">", ">="]
OPS: tuple[Op, ...] = ("==", "!=", "<", "<=", ">", ">=")
Value: TypeAlias = str | float | bool | dt.date
KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})

OP_BY_TEXT: dict[str, Op] = {op: op for op in OPS}

# AST ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Compare:
    """``attribute op value``; a bare boolean name ``x`` is ``Compare("x", "==", True)``."""

    attribute: str
    op: Op
    value: Value
    column: int = dataclasses.field(default=0, compare=False)


@dataclasses.dataclass(frozen=True)
class InList:
    """``attribute in [values]``, or ``attribute not in [values]`` when ``negated``."""

    attribute: str
    values: tuple[Value, ...]
    negated: bool = False
    column: int = dataclasses.field(default=0, compare=False)


@dataclasses.dataclass(frozen=True)
class And:
    items: tuple[Expr, ...]


@dataclasses.dataclass(frozen=True)
class Or:
    items: tuple[Expr, ...]


@dataclasses.dataclass(frozen=True)
class Not:
    item: Expr


@dataclasses.dataclass(frozen=True)
class Const:
    """The rule ``true`` (everyone) or ``false`` (no one)."""

    value: bool


Expr: TypeAlias = Compare | InList | And | Or | Not | Const


# Errors ------------------------------------------------------------------------------------------


class RuleError(InvalidInput):
    """A rule that cannot be used. ``column`` is 1-based (0: unknown); ``problem`` has no location.

    The message quotes the rule and puts a caret under the column on a second line.
    """

    def __init__(
        self,
        problem: str,
        *,
        rule: str | None,
        column: int,
        field: str = "rule",
        valid: list[str] | None = None,
    ) -> None:
        super().__init__(_locate(problem, rule, column), field=field, valid=valid)
        self.problem = problem
        self.rule = rule
        self.column = column

    def body(self) -> dict[str, Any]:
        """The HTTP error body: the message on one line (no caret), the column as a field."""
        body = super().body()
        body["error"]["message"] = self.message.split("\n", 1)[0]
        body["error"]["column"] = self.column
        return body


class RuleSyntaxError(RuleError):
    """The text is not a rule of the language."""


class RuleValidationError(RuleError):
    """The rule does not fit the declared attributes."""


def _locate(problem: str, rule: str | None, column: int) -> str:
    if column <= 0:
        return problem
    if rule is None:
        return f"{problem} at column {column}"
    head = f"{problem} at column {column} in rule: "
    # A newline or tab (in the rule or in a level it names) would shift the caret.
    shown = "".join(c if c.isprintable() else " " for c in head + rule)
    return f"{shown}\n{' ' * (len(head) + column - 1)}^"
