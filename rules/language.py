r"""The marketer rule language: tokenizer, recursive-descent parser, validator and evaluator.

A rule is a condition over customer attributes::

    plan == "premium" and tenure_months < 12 and region in ["north", "east"] and not fraud_flag

Grammar (keywords are lowercase; ``or`` binds loosest, then ``and``, then ``not``)::

    rule      := or_expr END
    or_expr   := and_expr ("or" and_expr)*
    and_expr  := not_expr ("and" not_expr)*
    not_expr  := "not" not_expr | primary
    primary   := "(" or_expr ")" | "true" | "false" | condition
    condition := NAME [OP literal | "in" list | "not" "in" list]     (bare NAME: NAME == true)
    list      := "[" literal ("," literal)* "]"
    literal   := STRING | NUMBER | DATE | "true" | "false"

Strings take double or single quotes and the escapes ``\\ \" \' \n \r \t \uXXXX``; numbers are
decimal with an optional leading minus and exponent; dates are written bare (``2026-01-01``). The
text is only ever read by the tokenizer and parser (``rules._parser``), never by eval, exec or
literal_eval.

Evaluation (``compile_predicate``) runs over attribute values as stored in JSON:

- a comparison, ``in`` or ``not in`` on a missing attribute (absent key or None) is False, and so
  is one on a value of the wrong type: there is no coercion ('5' never equals 5, True never equals
  1, NaN and infinities are missing; a date is a ``datetime.date`` or an ISO 'YYYY-MM-DD' string);
- ``not X`` is the plain negation of X: ``not plan == "basic"`` is True for a customer with no plan,
  while ``plan != "basic"`` is False for that customer.

Columns are 1-based character offsets into the rule text (a newline counts as one character). A
column is where a node was written, not what it means: it is left out of equality and of the JSON
form, so ``parse(to_text(e)) == e`` and ``from_json(to_json(e)) == e``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeAlias

from engine.attributes import AttributeSpec, AttributeType
from engine.errors import InvalidInput
from rules._ast import (
    KEYWORDS,
    OP_BY_TEXT,
    OPS,
    And,
    Compare,
    Const,
    Expr,
    InList,
    Not,
    Op,
    Or,
    RuleError,
    RuleSyntaxError,
    RuleValidationError,
    Value,
)
from rules._parser import NAME, Parser, iso_date

__all__ = [
    "KEYWORDS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "OPS",
    "And",
    "Compare",
    "Const",
    "Expr",
    "InList",
    "Not",
    "Op",
    "Or",
    "Predicate",
    "RuleError",
    "RuleSyntaxError",
    "RuleValidationError",
    "Value",
    "attributes_of",
    "compile_predicate",
    "from_json",
    "parse",
    "parse_rule",
    "to_json",
    "to_text",
    "validate",
]

Predicate: TypeAlias = Callable[[Mapping[str, Any]], bool]
MAX_LENGTH = 2000
MAX_DEPTH = 32
"""Default limits: characters in a rule, and nesting of parentheses plus ``not``."""


# Parsing -----------------------------------------------------------------------------------------


def parse(
    text: str, *, max_length: int = MAX_LENGTH, max_depth: int = MAX_DEPTH, field: str = "rule"
) -> Expr:
    """The AST of a rule; numbers are floats. Raises ``RuleSyntaxError`` pointing at the column."""
    if not 1 <= max_depth <= 200:
        raise ValueError(f"max_depth must be between 1 and 200, got {max_depth}")
    if len(text) > max_length:
        problem = f"rule is {len(text)} characters long; the limit is {max_length}"
        raise RuleSyntaxError(problem, rule=text, column=0, field=field)
    if not text.strip():
        raise RuleSyntaxError("rule is empty", rule=text, column=0, field=field)
    try:
        return Parser(text, max_depth=max_depth).rule()
    except RuleSyntaxError as error:
        error.field = field
        raise


# Validation --------------------------------------------------------------------------------------


def validate(
    expr: Expr, specs: Mapping[str, AttributeSpec], *, rule: str | None = None, field: str = "rule"
) -> Expr:
    """The rule checked against the declared attributes, numbers as floats.

    Raises ``RuleValidationError`` at the column of the offending attribute (quoting ``rule`` when
    given): unknown attribute, unknown level, ordering on a categorical or boolean, or a value of
    the wrong type.
    """

    def fail(problem: str, node: Compare | InList, valid: list[str] | None = None) -> NoReturn:
        raise RuleValidationError(problem, rule=rule, column=node.column, field=field, valid=valid)

    def check(node: Compare | InList, op: Op, value: Value) -> Value:
        spec = specs[node.attribute]
        kind, name, hint, levels = spec.type, node.attribute, _hint(spec), list(spec.levels)
        if kind != "boolean" and isinstance(value, bool):
            fail(f"{name} is a {kind} attribute, not boolean; compare it with {hint}", node)
        if op not in ("==", "!=") and kind in ("categorical", "boolean"):
            fail(f"{name} is a {kind} attribute, so {op!r} does not apply; {_UNORDERED}", node)
        if _kind(value) != kind:
            problem = f"{name} is a {kind} attribute and cannot be compared with {_describe(value)}"
            fail(f"{problem}; compare it with {hint}", node)
        if kind == "categorical" and value not in levels:
            fail(f"{value!r} is not a level of {name}; levels: {', '.join(levels)}", node, levels)
        return float(value) if kind == "numeric" and isinstance(value, int | float) else value

    def walk(node: Expr) -> Expr:
        if isinstance(node, Compare | InList) and node.attribute not in specs:
            declared = sorted(specs)
            problem = f"unknown attribute {node.attribute!r}; declared attributes: "
            fail(problem + (", ".join(declared) or "none"), node, declared)
        if isinstance(node, Compare):
            return dataclasses.replace(node, value=check(node, node.op, node.value))
        if isinstance(node, InList):
            if not node.values:
                fail("empty list after 'in'", node)
            return dataclasses.replace(
                node, values=tuple(check(node, "==", v) for v in node.values)
            )
        if isinstance(node, And | Or):
            return type(node)(tuple(walk(item) for item in node.items))
        return Not(walk(node.item)) if isinstance(node, Not) else node

    return walk(expr)


def parse_rule(
    text: str,
    specs: Mapping[str, AttributeSpec],
    *,
    field: str = "rule",
    max_length: int = MAX_LENGTH,
) -> Expr:
    """``parse`` then ``validate``: the checked AST of a marketer's rule."""
    return validate(parse(text, max_length=max_length, field=field), specs, rule=text, field=field)


_UNORDERED = "use ==, !=, in or not in"


def _hint(spec: AttributeSpec) -> str:
    if spec.type == "categorical":
        return f"one of its levels: {', '.join(spec.levels)}"
    return {
        "numeric": "a number, e.g. 12 or 50.5",
        "boolean": "true or false",
        "date": "a date written bare, e.g. 2026-01-01",
    }[spec.type]


def _describe(value: Value) -> str:
    if isinstance(value, bool):
        return _literal(value)
    kind = (
        "date" if isinstance(value, dt.date) else "string" if isinstance(value, str) else "number"
    )
    return f"{kind} {_literal(value)}"


# Evaluation --------------------------------------------------------------------------------------

_COMPARE: dict[Op, Callable[[Any, Any], bool]] = dict(
    zip(
        OPS,
        (operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge),
        strict=True,
    )
)


def _kind(value: Any) -> AttributeType | None:
    """The attribute type a value belongs to, without coercion (None: none of them)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dt.datetime):
        return None  # a date subclass that raises when compared with a date
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, str):
        return "categorical"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return "numeric"
    return None  # NaN and infinities are never stored: treat them as missing


def _stored(value: Any, kind: AttributeType | None) -> Any:
    """A stored value as the literal's kind, or None when it is missing or of another kind."""
    if kind == "date" and isinstance(value, str):
        return iso_date(value)
    return value if kind is not None and _kind(value) == kind else None


def compile_predicate(expr: Expr) -> Predicate:
    """A pure-Python test of a customer's stored attributes (semantics in the module docstring)."""
    if isinstance(expr, Compare):
        name, test, literal, kind = expr.attribute, _COMPARE[expr.op], expr.value, _kind(expr.value)

        def compare(attributes: Mapping[str, Any]) -> bool:
            value = _stored(attributes.get(name), kind)
            return value is not None and test(value, literal)

        return compare
    if isinstance(expr, InList):
        kind_to_values: dict[AttributeType | None, set[Value]] = {}
        for literal in expr.values:
            kind_to_values.setdefault(_kind(literal), set()).add(literal)
        name, negated = expr.attribute, expr.negated

        def member(attributes: Mapping[str, Any]) -> bool:
            raw, typed, found = attributes.get(name), False, False
            for kind, values in kind_to_values.items():
                value = _stored(raw, kind)
                if value is not None:
                    typed, found = True, found or value in values
            return typed and found != negated

        return member
    if isinstance(expr, And | Or):
        tests = tuple(compile_predicate(item) for item in expr.items)
        if isinstance(expr, And):
            return lambda attributes: all(t(attributes) for t in tests)
        return lambda attributes: any(t(attributes) for t in tests)
    if isinstance(expr, Not):
        inner = compile_predicate(expr.item)
        return lambda attributes: not inner(attributes)
    constant = expr.value
    return lambda attributes: constant


# Text and JSON -----------------------------------------------------------------------------------


def _literal(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped) + '"'
    if float(value).is_integer() and abs(value) < 1e16:
        return f"{value:.0f}"  # keeps the sign of -0.0
    return repr(float(value))  # the shortest text that reads back as the same float


def to_text(expr: Expr) -> str:
    """Canonical text of a rule: ``parse(to_text(e)) == e``; a bare name for ``x == true``."""
    if isinstance(expr, Compare):
        if expr.op == "==" and expr.value is True:
            return expr.attribute
        return f"{expr.attribute} {expr.op} {_literal(expr.value)}"
    if isinstance(expr, InList):
        keyword = "not in" if expr.negated else "in"
        return f"{expr.attribute} {keyword} [{', '.join(_literal(v) for v in expr.values)}]"
    if isinstance(expr, And):
        return " and ".join(_wrapped(item, (And, Or)) for item in expr.items)
    if isinstance(expr, Or):
        return " or ".join(_wrapped(item, (Or,)) for item in expr.items)
    if isinstance(expr, Not):
        return "not " + _wrapped(expr.item, (And, Or))
    return _literal(expr.value)


def _wrapped(expr: Expr, needs_parentheses: tuple[type[And | Or], ...]) -> str:
    text = to_text(expr)
    return f"({text})" if isinstance(expr, needs_parentheses) else text


def attributes_of(expr: Expr) -> set[str]:
    """Names of the attributes a rule reads."""
    if isinstance(expr, Compare | InList):
        return {expr.attribute}
    if isinstance(expr, And | Or):
        return set().union(*(attributes_of(item) for item in expr.items))
    return attributes_of(expr.item) if isinstance(expr, Not) else set()


def _value_to_json(value: Value) -> Any:
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    return value if isinstance(value, bool | str) else float(value)


def to_json(expr: Expr) -> dict[str, Any]:
    """The JSON form of a rule (no columns); dates are ``{"date": "2026-01-01"}``."""
    if isinstance(expr, Compare):
        value = _value_to_json(expr.value)
        return {"kind": "compare", "attribute": expr.attribute, "op": expr.op, "value": value}
    if isinstance(expr, InList):
        values, negated = [_value_to_json(v) for v in expr.values], expr.negated
        return {"kind": "in", "attribute": expr.attribute, "values": values, "negated": negated}
    if isinstance(expr, And | Or):
        kind = "and" if isinstance(expr, And) else "or"
        return {"kind": kind, "items": [to_json(item) for item in expr.items]}
    if isinstance(expr, Not):
        return {"kind": "not", "item": to_json(expr.item)}
    return {"kind": "const", "value": expr.value}


_JSON_KEYS = {
    "compare": {"kind", "attribute", "op", "value"},
    "in": {"kind", "attribute", "values", "negated"},
    "and": {"kind", "items"},
    "or": {"kind", "items"},
    "not": {"kind", "item"},
    "const": {"kind", "value"},
}


def from_json(data: Any, *, field: str = "rule", max_depth: int = 100) -> Expr:
    """Inverse of ``to_json`` for untrusted JSON; raises ``InvalidInput`` naming the bad field."""

    def fail(problem: str, where: str, valid: list[str] | None = None) -> NoReturn:
        raise InvalidInput(f"{where}: {problem}", field=where, valid=valid)

    def value(raw: Any, where: str) -> Value:
        if _kind(raw) in ("boolean", "categorical", "numeric"):
            return raw if isinstance(raw, bool | str) else float(raw)
        date = raw.get("date") if isinstance(raw, Mapping) and len(raw) == 1 else None
        if isinstance(date, str) and (parsed := iso_date(date)) is not None:
            return parsed
        fail(f'expected a string, number, boolean or {{"date": "YYYY-MM-DD"}}, got {raw!r}', where)

    def node(raw: Any, where: str, depth: int) -> Expr:
        if depth > max_depth:
            fail(f"rule is nested more than {max_depth} levels deep", where)
        if not isinstance(raw, Mapping):
            fail(f"expected an object, got {raw!r}", where)
        kind = raw.get("kind")
        if not isinstance(kind, str) or kind not in _JSON_KEYS:
            fail(f"unknown kind {kind!r}", f"{where}.kind", sorted(_JSON_KEYS))
        if set(raw) != _JSON_KEYS[kind]:
            fail(f"a {kind!r} node has exactly the keys {sorted(_JSON_KEYS[kind])}", where)
        if kind in ("compare", "in"):
            name = raw["attribute"]
            if not isinstance(name, str) or not NAME.fullmatch(name) or name in KEYWORDS:
                fail(f"not an attribute name: {name!r}", f"{where}.attribute")
        if kind == "compare":
            if not isinstance(raw["op"], str) or raw["op"] not in OP_BY_TEXT:
                fail(f"unknown operator {raw['op']!r}", f"{where}.op", list(OPS))
            return Compare(name, OP_BY_TEXT[raw["op"]], value(raw["value"], f"{where}.value"))
        if kind == "in":
            values, negated = raw["values"], raw["negated"]
            if not isinstance(values, list) or not values or not isinstance(negated, bool):
                fail("'values' must be a non-empty list and 'negated' a boolean", where)
            return InList(
                name, tuple(value(v, f"{where}.values.{i}") for i, v in enumerate(values)), negated
            )
        if kind in ("and", "or"):
            items = raw["items"]
            if not isinstance(items, list) or len(items) < 2:
                fail("'items' must be a list of at least 2 rules", f"{where}.items")
            parsed = tuple(
                node(item, f"{where}.items.{i}", depth + 1) for i, item in enumerate(items)
            )
            return And(parsed) if kind == "and" else Or(parsed)
        if kind == "not":
            return Not(node(raw["item"], f"{where}.item", depth + 1))
        if not isinstance(raw["value"], bool):
            fail(f"a const is true or false, got {raw['value']!r}", f"{where}.value")
        return Const(raw["value"])

    return node(data, field, 0)
