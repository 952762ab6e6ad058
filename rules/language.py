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
text is only ever read by the tokenizer and parser below, never by eval, exec or literal_eval.

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
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, NoReturn, TypeAlias

from engine.attributes import AttributeSpec, AttributeType
from engine.errors import InvalidInput

Op = Literal["==", "!=", "<", "<=", ">", ">="]
OPS: tuple[Op, ...] = ("==", "!=", "<", "<=", ">", ">=")
Value: TypeAlias = str | float | bool | dt.date
Predicate: TypeAlias = Callable[[Mapping[str, Any]], bool]
KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
MAX_LENGTH = 2000
MAX_DEPTH = 32
"""Default limits: characters in a rule, and nesting of parentheses plus ``not``."""

_OP_BY_TEXT: dict[str, Op] = {op: op for op in OPS}


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


# Tokenizer ---------------------------------------------------------------------------------------

_TokenKind = Literal["name", "keyword", "string", "number", "date", "op", "punct", "end"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A digit run swallows everything a number or date could be made of, so that `5abc` or
# `2026-1-1` is reported whole instead of splitting into confusing tokens.
_NUMBERISH = re.compile(r"-?[0-9][0-9A-Za-z_.+\-]*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t"}
_HINTS = {"=": "'=='", "!": "'!=' or 'not'", "&": "'and'", "|": "'or'"}


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: _TokenKind
    text: str
    column: int
    value: Value | None = None

    def describe(self) -> str:
        if self.kind == "end":
            return "end of rule"
        if self.kind == "name":
            return f"name {self.text!r}"
        if self.kind in ("string", "number", "date"):
            return f"{self.kind} {self.text}"
        return repr(self.text)

    def is_(self, kind: _TokenKind, text: str) -> bool:
        return self.kind == kind and self.text == text


def _tokens(text: str) -> Iterator[_Token]:
    """Tokens one at a time, so that the parser reports the leftmost error."""
    pos = 0
    while pos < len(text):
        ch, column = text[pos], pos + 1
        if ch.isspace():
            pos += 1
        elif ch in "\"'":
            value, end = _read_string(text, pos)
            yield _Token("string", text[pos:end], column, value)
            pos = end
        elif name := _NAME.match(text, pos):
            word = name.group()
            boolean = {"true": True, "false": False}.get(word)
            yield _Token("keyword" if word in KEYWORDS else "name", word, column, boolean)
            pos = name.end()
        elif number := _NUMBERISH.match(text, pos):
            yield _number_or_date(text, number.group(), column)
            pos = number.end()
        elif text.startswith(("==", "!=", "<=", ">="), pos):
            yield _Token("op", text[pos : pos + 2], column)
            pos += 2
        elif ch in "<>()[],":
            yield _Token("op" if ch in "<>" else "punct", ch, column)
            pos += 1
        else:
            hint = f" (write {_HINTS[ch]})" if ch in _HINTS else ""
            raise RuleSyntaxError(f"unexpected character {ch!r}{hint}", rule=text, column=column)
    while True:
        yield _Token("end", "", len(text) + 1)


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote, chars, pos = text[start], list[str](), start + 1
    while pos < len(text) and text[pos] != "\n":
        ch = text[pos]
        if ch == quote:
            return "".join(chars), pos + 1
        if ch != "\\":
            chars.append(ch)
            pos += 1
            continue
        escape = text[pos + 1 : pos + 2]
        if escape in ("", "\n"):
            break
        if escape == "u":
            if not _HEX4.fullmatch(text, pos + 2, pos + 6):
                raise RuleSyntaxError(
                    "'\\u' must be followed by 4 hex digits", rule=text, column=pos + 1
                )
            chars.append(chr(int(text[pos + 2 : pos + 6], 16)))
            pos += 6
        elif escape in _ESCAPES:
            chars.append(_ESCAPES[escape])
            pos += 2
        else:
            raise RuleSyntaxError(
                f"unknown escape '\\{escape}' in string", rule=text, column=pos + 1
            )
    raise RuleSyntaxError("unterminated string", rule=text, column=start + 1)


def _number_or_date(text: str, word: str, column: int) -> _Token:
    if _DATE.fullmatch(word):
        if (date := _date(word)) is None:
            raise RuleSyntaxError(f"invalid date {word}", rule=text, column=column)
        return _Token("date", word, column, date)
    if not _NUMBER.fullmatch(word):
        raise RuleSyntaxError(f"malformed number {word!r}", rule=text, column=column)
    number = float(word)
    if not math.isfinite(number):
        raise RuleSyntaxError(f"number out of range {word}", rule=text, column=column)
    return _Token("number", word, column, number)


# Parser ------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, *, max_depth: int) -> None:
        self.text = text
        self.max_depth = max_depth
        self.depth = 0
        self.stream = _tokens(text)
        self.ahead: list[_Token] = []

    def peek(self) -> _Token:
        if not self.ahead:
            self.ahead.append(next(self.stream))
        return self.ahead[0]

    def take(self) -> _Token:
        token = self.peek()
        self.ahead.pop()
        return token

    def fail(self, problem: str, token: _Token) -> NoReturn:
        raise RuleSyntaxError(problem, rule=self.text, column=token.column)

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            self.fail(f"rule is nested more than {self.max_depth} levels deep", token)

    def rule(self) -> Expr:
        expr = self.chain("or")
        token = self.peek()
        if token.kind != "end":
            hint = ""
            if token.kind == "name" and token.text.lower() in KEYWORDS:
                hint = f" (keywords are lowercase: {token.text.lower()})"
            self.fail(f"unexpected {token.describe()}{hint}", token)
        return expr

    def chain(self, keyword: Literal["or", "and"]) -> Expr:
        operand = self.not_expr if keyword == "and" else lambda: self.chain("and")
        items = [operand()]
        while self.peek().is_("keyword", keyword):
            self.take()
            items.append(operand())
        if len(items) == 1:
            return items[0]
        return And(tuple(items)) if keyword == "and" else Or(tuple(items))

    def not_expr(self) -> Expr:
        if not self.peek().is_("keyword", "not"):
            return self.primary()
        self.enter(self.take())
        item = self.not_expr()
        self.depth -= 1
        return Not(item)

    def primary(self) -> Expr:
        token = self.take()
        if token.is_("punct", "("):
            self.enter(token)
            expr = self.chain("or")
            close = self.take()
            if close.kind == "end":
                self.fail("unclosed '('", token)
            if not close.is_("punct", ")"):
                self.fail(f"expected ')', found {close.describe()}", close)
            self.depth -= 1
            return expr
        if token.kind == "keyword" and isinstance(token.value, bool):
            return Const(token.value)
        if token.kind == "name":
            return self.condition(token)
        self.fail(f"expected an attribute name, found {token.describe()}", token)

    def condition(self, name: _Token) -> Expr:
        token = self.peek()
        if token.kind == "op":
            self.take()
            value = self.literal(f"after {token.text!r}")
            return Compare(name.text, _OP_BY_TEXT[token.text], value, name.column)
        if not (token.is_("keyword", "in") or token.is_("keyword", "not")):
            return Compare(name.text, "==", True, name.column)
        self.take()
        if token.text == "not" and not (after := self.take()).is_("keyword", "in"):
            self.fail(f"expected 'in' after 'not', found {after.describe()}", after)
        return InList(name.text, self.values(), token.text == "not", name.column)

    def literal(self, where: str) -> Value:
        token = self.take()
        if token.value is None:
            self.fail(f"expected a value {where}, found {token.describe()}", token)
        return token.value

    def values(self) -> tuple[Value, ...]:
        start = self.take()
        if not start.is_("punct", "["):
            self.fail(f"expected '[' after 'in', found {start.describe()}", start)
        if self.peek().is_("punct", "]"):
            self.fail("empty list after 'in'", start)
        values = [self.literal("in the list")]
        while not (token := self.take()).is_("punct", "]"):
            if not token.is_("punct", ","):
                self.fail(f"expected ',' or ']' in the list, found {token.describe()}", token)
            values.append(self.literal("after ','"))
        return tuple(values)


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
        return _Parser(text, max_depth=max_depth).rule()
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


def _date(text: str) -> dt.date | None:
    """A strict ISO 'YYYY-MM-DD' date (``fromisoformat`` alone also takes '20260101')."""
    try:
        return dt.date.fromisoformat(text) if _DATE.fullmatch(text) else None
    except ValueError:
        return None


def _stored(value: Any, kind: AttributeType | None) -> Any:
    """A stored value as the literal's kind, or None when it is missing or of another kind."""
    if kind == "date" and isinstance(value, str):
        return _date(value)
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
        if isinstance(date, str) and (parsed := _date(date)) is not None:
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
            if not isinstance(name, str) or not _NAME.fullmatch(name) or name in KEYWORDS:
                fail(f"not an attribute name: {name!r}", f"{where}.attribute")
        if kind == "compare":
            if not isinstance(raw["op"], str) or raw["op"] not in _OP_BY_TEXT:
                fail(f"unknown operator {raw['op']!r}", f"{where}.op", list(OPS))
            return Compare(name, _OP_BY_TEXT[raw["op"]], value(raw["value"], f"{where}.value"))
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
