"""Tokenizer and recursive-descent parser of the rule language (grammar: ``rules.language``).

Private: ``rules.language.parse`` is the entry point, with the length and depth limits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Iterator
from typing import Literal, NoReturn

from rules._ast import (
    KEYWORDS,
    OP_BY_TEXT,
    And,
    Compare,
    Const,
    Expr,
    InList,
    Not,
    Or,
    RuleSyntaxError,
    Value,
)

# Tokenizer ---------------------------------------------------------------------------------------

_TokenKind = Literal["name", "keyword", "string", "number", "date", "op", "punct", "end"]

# An attribute name or keyword; ``rules.language.from_json`` checks names with it too.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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
        elif name := NAME.match(text, pos):
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
        if (date := iso_date(word)) is None:
            raise RuleSyntaxError(f"invalid date {word}", rule=text, column=column)
        return _Token("date", word, column, date)
    if not _NUMBER.fullmatch(word):
        raise RuleSyntaxError(f"malformed number {word!r}", rule=text, column=column)
    number = float(word)
    if not math.isfinite(number):
        raise RuleSyntaxError(f"number out of range {word}", rule=text, column=column)
    return _Token("number", word, column, number)


def iso_date(text: str) -> dt.date | None:
    """A strict ISO 'YYYY-MM-DD' date (``fromisoformat`` alone also takes '20260101')."""
    try:
        return dt.date.fromisoformat(text) if _DATE.fullmatch(text) else None
    except ValueError:
        return None


# Parser ------------------------------------------------------------------------------------------


class Parser:
    """One rule's text to its AST (``rule()``); raises ``RuleSyntaxError`` at the first error."""

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
            return Compare(name.text, OP_BY_TEXT[token.text], value, name.column)
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
