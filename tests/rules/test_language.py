"""Tests of the marketer rule language: parser, validator, evaluator, text and JSON forms."""

from __future__ import annotations

import ast
import builtins
import datetime as dt
import json
import math
import operator
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rules
from engine.attributes import AttributeSpec
from engine.errors import InvalidInput
from rules import language
from rules.language import (
    And,
    Compare,
    Const,
    Expr,
    InList,
    Not,
    Or,
    RuleSyntaxError,
    RuleValidationError,
    Value,
    attributes_of,
    compile_predicate,
    from_json,
    parse,
    parse_rule,
    to_json,
    to_text,
    validate,
)

SPECS = {
    spec.name: spec
    for spec in (
        AttributeSpec("plan", "categorical", levels=("basic", "premium", 'it\'s "vip"\\')),
        AttributeSpec("region", "categorical", levels=("north", "east", "south")),
        AttributeSpec("tenure_months", "numeric", bins=(12.0, 36.0)),
        AttributeSpec("monthly_spend", "numeric"),
        AttributeSpec("fraud_flag", "boolean"),
        AttributeSpec("is_vip", "boolean"),
        AttributeSpec("signup_date", "date"),
    )
}
DECLARED = "fraud_flag, is_vip, monthly_spend, plan, region, signup_date, tenure_months"
EXAMPLE = (
    'plan == "premium" and tenure_months < 12 and region in ["north", "east"] and not fraud_flag'
)
CUSTOMER = {
    "plan": "premium",
    "region": "north",
    "tenure_months": 6,
    "monthly_spend": 60.0,
    "fraud_flag": False,
    "is_vip": True,
    "signup_date": "2025-06-30",
}


def located(text: str, column: int, problem: str) -> str:
    head = f"{problem} at column {column} in rule: "
    return f"{head}{text}\n{' ' * (len(head) + column - 1)}^"


def same(a: Expr, b: Expr) -> bool:
    """Equal, and with the same literal types (``True == 1.0`` fools plain equality)."""
    return a == b and json.dumps(to_json(a)) == json.dumps(to_json(b))


# Parsing -----------------------------------------------------------------------------------------

C = Compare("c", "==", True)
PARSED: list[tuple[str, Expr]] = [
    (
        EXAMPLE,
        And(
            (
                Compare("plan", "==", "premium"),
                Compare("tenure_months", "<", 12.0),
                InList("region", ("north", "east")),
                Not(Compare("fraud_flag", "==", True)),
            )
        ),
    ),
    (
        '(plan != "basic" or monthly_spend >= 50.5) and signup_date < 2026-01-01',
        And(
            (
                Or((Compare("plan", "!=", "basic"), Compare("monthly_spend", ">=", 50.5))),
                Compare("signup_date", "<", dt.date(2026, 1, 1)),
            )
        ),
    ),
    ("fraud_flag == false", Compare("fraud_flag", "==", False)),
    ('region not in ["south"]', InList("region", ("south",), negated=True)),
    ("a or b and c", Or((Compare("a", "==", True), And((Compare("b", "==", True), C))))),
    ("not a and b", And((Not(Compare("a", "==", True)), Compare("b", "==", True)))),
    ('not plan == "basic"', Not(Compare("plan", "==", "basic"))),
    ("not not a", Not(Not(Compare("a", "==", True)))),
    ("(a and b) and c", And((And((Compare("a", "==", True), Compare("b", "==", True))), C))),
    ("((x > -1.5e3))", Compare("x", ">", -1500.0)),
    ("x<=0", Compare("x", "<=", 0.0)),
    ("x >= -0", Compare("x", ">=", -0.0)),
    ("x == 007", Compare("x", "==", 7.0)),
    ("x != 1.25", Compare("x", "!=", 1.25)),
    ("s == 'it\\'s'", Compare("s", "==", "it's")),
    ('s == "a\\"b\\\\c\\n\\t\\r\\u00e9"', Compare("s", "==", 'a"b\\c\n\t\ré')),
    ('s == ""', Compare("s", "==", "")),
    ("s == \"caf\u00e9 'x'\"", Compare("s", "==", "café 'x'")),
    ("f == true", Compare("f", "==", True)),
    ("f != false", Compare("f", "!=", False)),
    ("d in [2026-01-01, 1999-12-31]", InList("d", (dt.date(2026, 1, 1), dt.date(1999, 12, 31)))),
    ("r not in [1,2 ,3]", InList("r", (1.0, 2.0, 3.0), negated=True)),
    ("_x9 in [true]", InList("_x9", (True,))),
    ("true", Const(True)),
    ("false or a", Or((Const(False), Compare("a", "==", True)))),
    ("a\n and\tb", And((Compare("a", "==", True), Compare("b", "==", True)))),
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parse(text: str, expected: Expr) -> None:
    parsed = parse(text)
    assert same(parsed, expected)
    assert same(parse(to_text(parsed)), parsed)


def test_parse_records_the_column_of_each_condition() -> None:
    expr = parse(EXAMPLE)
    assert isinstance(expr, And)
    columns = [item.column for item in expr.items if isinstance(item, Compare | InList)]
    assert columns == [1, 23, 46]
    negated = expr.items[3]
    assert isinstance(negated, Not)
    assert isinstance(negated.item, Compare)
    assert negated.item.column == 82


def test_numbers_are_floats_and_keywords_are_not_names() -> None:
    expr = parse("x == 12")
    assert isinstance(expr, Compare)
    assert type(expr.value) is float
    with pytest.raises(RuleSyntaxError):
        parse("in == 1")


# Bad rules ---------------------------------------------------------------------------------------

SYNTAX_ERRORS: list[tuple[str, int, str]] = [
    ('plan == "basic")', 16, "unexpected ')'"),
    ("plan ==", 8, "expected a value after '==', found end of rule"),
    ('== "x"', 1, "expected an attribute name, found '=='"),
    ('plan === "x"', 8, "unexpected character '=' (write '==')"),
    ('plan = "x"', 6, "unexpected character '=' (write '==')"),
    ('plan == "basic', 9, "unterminated string"),
    ("plan == 'basic", 9, "unterminated string"),
    ('plan == "bas\nic"', 9, "unterminated string"),
    ('plan == "basic\\', 9, "unterminated string"),
    ('plan == "a\\q"', 11, "unknown escape '\\q' in string"),
    ('plan == "\\u12"', 10, "'\\u' must be followed by 4 hex digits"),
    ('__import__("os")', 11, "unexpected '('"),
    ('__import__("os").system("rm -rf /")', 11, "unexpected '('"),
    ('plan == "basic"; drop', 16, "unexpected character ';'"),
    ("exec('x')", 5, "unexpected '('"),
    ("a.b == 1", 2, "unexpected character '.'"),
    ("region in []", 11, "empty list after 'in'"),
    ('region in "north"', 11, "expected '[' after 'in', found string \"north\""),
    ('region in ["north",]', 20, "expected a value after ',', found ']'"),
    ('region in ["north" "east"]', 20, "expected ',' or ']' in the list, found string \"east\""),
    ('region in ["north"', 19, "expected ',' or ']' in the list, found end of rule"),
    ('region in [["north"]]', 12, "expected a value in the list, found '['"),
    ('region not ["north"]', 12, "expected 'in' after 'not', found '['"),
    ('(plan == "basic"', 1, "unclosed '('"),
    ('(plan == "basic" fraud_flag)', 18, "expected ')', found name 'fraud_flag'"),
    ("()", 2, "expected an attribute name, found ')'"),
    ("a and", 6, "expected an attribute name, found end of rule"),
    ("and a", 1, "expected an attribute name, found 'and'"),
    ("not", 4, "expected an attribute name, found end of rule"),
    ("a AND b", 3, "unexpected name 'AND' (keywords are lowercase: and)"),
    ("a Or b", 3, "unexpected name 'Or' (keywords are lowercase: or)"),
    ("a && b", 3, "unexpected character '&' (write 'and')"),
    ("a || b", 3, "unexpected character '|' (write 'or')"),
    ("!a", 1, "unexpected character '!' (write '!=' or 'not')"),
    ("a b", 3, "unexpected name 'b'"),
    ("a == b", 6, "expected a value after '==', found name 'b'"),
    ('"x" == plan', 1, 'expected an attribute name, found string "x"'),
    ("tenure_months < 12 < 24", 20, "unexpected '<'"),
    ("tenure_months < 5abc", 17, "malformed number '5abc'"),
    ("tenure_months < 1.", 17, "malformed number '1.'"),
    ("tenure_months < .5", 17, "unexpected character '.'"),
    ("tenure_months < - 5", 17, "unexpected character '-'"),
    ("tenure_months < 1e999", 17, "number out of range 1e999"),
    ("signup_date < 2026-13-01", 15, "invalid date 2026-13-01"),
    ("signup_date < 2026-1-1", 15, "malformed number '2026-1-1'"),
    ("signup_date < 2026-02-30", 15, "invalid date 2026-02-30"),
    ("plan == None", 9, "expected a value after '==', found name 'None'"),
    ("plan == True", 9, "expected a value after '==', found name 'True'"),
    ("plan ~= 'x'", 6, "unexpected character '~'"),
    ("plan == 'x' # comment", 13, "unexpected character '#'"),
    ("r\u00e9gion == 'x'", 2, "unexpected character '\u00e9'"),
    ("lambda: 1", 7, "unexpected character ':'"),
]


@pytest.mark.parametrize(("text", "column", "problem"), SYNTAX_ERRORS)
def test_syntax_errors(text: str, column: int, problem: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse(text)
    error = caught.value
    assert isinstance(error, InvalidInput)
    shown = text.replace("\n", " ")
    assert error.message == located(shown, column, problem)
    assert (error.problem, error.column, error.rule, error.field) == (problem, column, text, "rule")


def test_syntax_error_message_points_a_caret_at_the_column() -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse('plan == "basic")')
    assert caught.value.message == (
        "unexpected ')' at column 16 in rule: plan == \"basic\")\n" + " " * 52 + "^"
    )
    first, caret = caught.value.message.split("\n")
    assert first[caret.index("^")] == ")"


@pytest.mark.parametrize(
    ("text", "max_length", "message"),
    [
        ("a" * 2001, 2000, "rule is 2001 characters long; the limit is 2000"),
        ("a == 1", 5, "rule is 6 characters long; the limit is 5"),
        ("", 2000, "rule is empty"),
        (" \n\t", 2000, "rule is empty"),
    ],
)
def test_too_long_or_empty_rules(text: str, max_length: int, message: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse(text, max_length=max_length)
    assert (caught.value.message, caught.value.column) == (message, 0)


def test_a_rule_of_exactly_the_maximum_length_parses() -> None:
    text = "a" * 2000
    assert parse(text) == Compare(text, "==", True)


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("(" * 33 + "a" + ")" * 33, 33),
        ("not " * 33 + "a", 129),
        ("(not " * 16 + "(a)" + ")" * 16, 81),
    ],
)
def test_nesting_too_deep(text: str, column: int) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse(text)
    assert caught.value.message == located(text, column, "rule is nested more than 32 levels deep")


def test_nesting_at_the_limit_parses_and_the_limit_is_adjustable() -> None:
    assert parse("(" * 32 + "a" + ")" * 32) == Compare("a", "==", True)
    assert parse("not " * 32 + "a") is not None
    with pytest.raises(RuleSyntaxError, match="nested more than 2 levels"):
        parse("((a))and (((b)))", max_depth=2)
    with pytest.raises(ValueError, match="max_depth must be between 1 and 200, got 0"):
        parse("a", max_depth=0)


def test_a_long_flat_rule_does_not_recurse() -> None:
    text = " and ".join(["fraud_flag"] * 1000)
    expr = parse_rule(text, SPECS, max_length=20_000)
    assert isinstance(expr, And)
    assert len(expr.items) == 1000


VALIDATION_ERRORS: list[tuple[str, int, str, list[str] | None]] = [
    (
        'plann == "basic"',
        1,
        f"unknown attribute 'plann'; declared attributes: {DECLARED}",
        sorted(SPECS),
    ),
    (
        'fraud_flag and Region in ["north"]',
        16,
        f"unknown attribute 'Region'; declared attributes: {DECLARED}",
        sorted(SPECS),
    ),
    (
        'plan == "gold"',
        1,
        "'gold' is not a level of plan; levels: basic, premium, it's \"vip\"\\",
        ["basic", "premium", 'it\'s "vip"\\'],
    ),
    (
        'region in ["north", "west"]',
        1,
        "'west' is not a level of region; levels: north, east, south",
        ["north", "east", "south"],
    ),
    (
        'region != "North"',
        1,
        "'North' is not a level of region; levels: north, east, south",
        ["north", "east", "south"],
    ),
    (
        'plan < "premium"',
        1,
        "plan is a categorical attribute, so '<' does not apply; use ==, !=, in or not in",
        None,
    ),
    (
        'region >= "east"',
        1,
        "region is a categorical attribute, so '>=' does not apply; use ==, !=, in or not in",
        None,
    ),
    (
        "region == 1",
        1,
        "region is a categorical attribute and cannot be compared with number 1; "
        "compare it with one of its levels: north, east, south",
        None,
    ),
    (
        "region",
        1,
        "region is a categorical attribute, not boolean; "
        "compare it with one of its levels: north, east, south",
        None,
    ),
    (
        'tenure_months < "12"',
        1,
        'tenure_months is a numeric attribute and cannot be compared with string "12"; '
        "compare it with a number, e.g. 12 or 50.5",
        None,
    ),
    (
        "tenure_months in [1, 2026-01-01]",
        1,
        "tenure_months is a numeric attribute and cannot be compared with date 2026-01-01; "
        "compare it with a number, e.g. 12 or 50.5",
        None,
    ),
    (
        "monthly_spend == true",
        1,
        "monthly_spend is a numeric attribute, not boolean; "
        "compare it with a number, e.g. 12 or 50.5",
        None,
    ),
    (
        "not fraud_flag == 1",
        5,
        "fraud_flag is a boolean attribute and cannot be compared with number 1; "
        "compare it with true or false",
        None,
    ),
    (
        'fraud_flag == "true"',
        1,
        'fraud_flag is a boolean attribute and cannot be compared with string "true"; '
        "compare it with true or false",
        None,
    ),
    (
        "fraud_flag > false",
        1,
        "fraud_flag is a boolean attribute, so '>' does not apply; use ==, !=, in or not in",
        None,
    ),
    (
        'signup_date < "2026-01-01"',
        1,
        'signup_date is a date attribute and cannot be compared with string "2026-01-01"; '
        "compare it with a date written bare, e.g. 2026-01-01",
        None,
    ),
    (
        "signup_date >= 20260101",
        1,
        "signup_date is a date attribute and cannot be compared with number 20260101; "
        "compare it with a date written bare, e.g. 2026-01-01",
        None,
    ),
    (
        "signup_date",
        1,
        "signup_date is a date attribute, not boolean; "
        "compare it with a date written bare, e.g. 2026-01-01",
        None,
    ),
]


@pytest.mark.parametrize(("text", "column", "problem", "valid"), VALIDATION_ERRORS)
def test_validation_errors(text: str, column: int, problem: str, valid: list[str] | None) -> None:
    with pytest.raises(RuleValidationError) as caught:
        parse_rule(text, SPECS, field="eligibility")
    error = caught.value
    assert isinstance(error, InvalidInput)
    assert error.message == located(text, column, problem)
    assert (error.problem, error.column, error.rule) == (problem, column, text)
    assert (error.field, error.valid) == ("eligibility", valid)


def test_validation_without_text_or_column_says_what_it_can() -> None:
    with pytest.raises(RuleValidationError) as caught:
        validate(parse("nope"), SPECS)
    assert caught.value.message.startswith("unknown attribute 'nope'; declared attributes: ")
    assert caught.value.message.endswith(" at column 1")
    with pytest.raises(RuleValidationError) as caught:
        validate(
            from_json({"kind": "in", "attribute": "plan", "values": [1], "negated": False}), {}
        )
    assert caught.value.message == "unknown attribute 'plan'; declared attributes: none"
    with pytest.raises(RuleValidationError) as caught:
        validate(InList("plan", ()), SPECS)
    assert caught.value.message == "empty list after 'in'"


def test_validation_makes_numbers_floats_and_keeps_the_rest() -> None:
    expr = validate(
        Or((Compare("tenure_months", "<", 12), InList("monthly_spend", (1, 2.5)))), SPECS
    )
    assert isinstance(expr, Or)
    compare, listed = expr.items
    assert isinstance(compare, Compare)
    assert isinstance(listed, InList)
    assert [type(v) for v in (compare.value, *listed.values)] == [float, float, float]
    assert same(parse_rule(EXAMPLE, SPECS), parse(EXAMPLE))


# No rule text can run code -----------------------------------------------------------------------

HOSTILE = [
    '__import__("os").system("touch /tmp/nextbest-pwned")',
    "exec('import os')",
    "eval('1')",
    "plan == __import__('os')",
    "plan == \"x\"; __import__('os')",
    'plan == "\\x41"',
    "open('/etc/passwd').read() == 'x'",
    "().__class__.__bases__[0].__subclasses__()",
    "[x for x in ()]",
    "lambda: 0",
    "plan == f'{__import__(\"os\")}'",
    "{{7*7}}",
    "${jndi:ldap://x}",
    "plan == 'x' or 1 == 1",
]


def parse_or_error(text: str) -> Expr | RuleSyntaxError:
    try:
        return parse(text)
    except RuleSyntaxError as error:
        return error


@pytest.mark.parametrize("text", HOSTILE)
def test_no_rule_text_runs_code(text: str) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the rule language ran code")

    # Patched by hand: pytest's monkeypatch itself imports while patching.
    namespace = vars(builtins)
    saved = {name: namespace[name] for name in ("eval", "exec", "compile", "__import__", "open")}
    namespace.update(dict.fromkeys(saved, refuse))
    try:
        outcome = parse_or_error(text)
    finally:
        namespace.update(saved)
    assert isinstance(outcome, RuleSyntaxError)
    assert not Path("/tmp/nextbest-pwned").exists()


@pytest.mark.parametrize("module", ["language.py", "_parser.py", "_ast.py"])
def test_the_rule_modules_never_call_an_evaluator(module: str) -> None:
    tree = ast.parse((Path(language.__file__).parent / module).read_text())
    banned_names = {"eval", "exec", "compile", "__import__", "getattr", "globals", "locals"}
    banned_attributes = {"literal_eval", "import_module", "system", "popen", "loads"}
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not names & banned_names
    assert not attributes & banned_attributes
    assert not imported & {"importlib", "pickle", "subprocess", "os", "sys", "builtins"}


TOKENS = ["plan", "a", "==", "!=", "<", ">=", "in", "not", "and", "or", "(", ")", "[", "]", ","]
TOKENS += ['"x"', "'y'", "1", "-2.5", "2026-01-01", "true", "false", "\\", '"', ";", "__import__"]


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(max_size=60),
        st.lists(st.sampled_from(TOKENS), max_size=12).map(" ".join),
        st.lists(st.sampled_from(TOKENS), max_size=12).map("".join),
    )
)
def test_any_text_parses_to_an_ast_or_a_syntax_error(text: str) -> None:
    outcome = parse_or_error(text)
    if isinstance(outcome, RuleSyntaxError):
        assert 0 <= outcome.column <= len(text) + 1
    else:
        assert isinstance(outcome, Compare | InList | And | Or | Not | Const)
        assert same(parse(to_text(outcome)), outcome)


# Evaluation --------------------------------------------------------------------------------------

NAN = float("nan")
EVALUATIONS: list[tuple[str, Mapping[str, Any], bool]] = [
    ('plan == "premium"', CUSTOMER, True),
    ('plan == "premium"', {}, False),
    ('plan == "premium"', {"plan": None}, False),
    ('plan != "premium"', {}, False),
    ('plan != "premium"', {"plan": None}, False),
    ('plan != "basic"', CUSTOMER, True),
    ('not plan == "basic"', {}, True),
    ('not plan != "basic"', {}, True),
    ('not plan == "premium"', CUSTOMER, False),
    ('region in ["north", "east"]', CUSTOMER, True),
    ('region in ["north", "east"]', {"region": "south"}, False),
    ('region in ["north", "east"]', {}, False),
    ('region not in ["north"]', {"region": "south"}, True),
    ('region not in ["north"]', CUSTOMER, False),
    ('region not in ["north"]', {"region": None}, False),
    ('not region in ["north"]', {}, True),
    ('plan == "premium"', {"plan": "Premium"}, False),
    ("tenure_months < 12", {"tenure_months": 6}, True),
    ("tenure_months < 12", {"tenure_months": 12.0}, False),
    ("tenure_months <= 12", {"tenure_months": 12}, True),
    ("tenure_months > 11.5", {"tenure_months": 12}, True),
    ("tenure_months == 12", {"tenure_months": "12"}, False),
    ("tenure_months != 12", {"tenure_months": "12"}, False),
    ("tenure_months == 1", {"tenure_months": True}, False),
    ("tenure_months in [1, 2]", {"tenure_months": True}, False),
    ("tenure_months in [1, 2]", {"tenure_months": 2}, True),
    ("tenure_months not in [1, 2]", {"tenure_months": 3.5}, True),
    ("tenure_months < 12", {"tenure_months": NAN}, False),
    ("not tenure_months < 12", {"tenure_months": NAN}, True),
    ("tenure_months > 12", {"tenure_months": math.inf}, False),
    ("tenure_months > 12", {"tenure_months": 10**400}, True),
    ("fraud_flag", {"fraud_flag": True}, True),
    ("fraud_flag", {"fraud_flag": 1}, False),
    ("fraud_flag", {"fraud_flag": "true"}, False),
    ("fraud_flag == false", {"fraud_flag": 0}, False),
    ("fraud_flag == false", {}, False),
    ("fraud_flag != true", {"fraud_flag": False}, True),
    ("fraud_flag != true", {"fraud_flag": "false"}, False),
    ("not fraud_flag", {}, True),
    ("not fraud_flag", CUSTOMER, True),
    ("signup_date < 2026-01-01", {"signup_date": "2025-12-31"}, True),
    ("signup_date < 2026-01-01", {"signup_date": dt.date(2026, 1, 1)}, False),
    ("signup_date >= 2026-01-01", {"signup_date": "2026-01-01"}, True),
    ("signup_date == 2026-01-01", {"signup_date": "20260101"}, False),
    ("signup_date == 2026-01-01", {"signup_date": "2026-01-01T00:00:00"}, False),
    ("signup_date < 2026-01-01", {"signup_date": "not a date"}, False),
    ("signup_date < 2026-01-01", {"signup_date": "2025-02-30"}, False),
    ("signup_date < 2026-01-01", {"signup_date": dt.datetime(2025, 1, 1)}, False),
    ("signup_date < 2026-01-01", {"signup_date": 20250101}, False),
    ("signup_date in [2025-06-30]", CUSTOMER, True),
    ("signup_date not in [2025-06-30]", {"signup_date": "2025-07-01"}, True),
    ('plan == "premium" and tenure_months < 12', CUSTOMER, True),
    ('plan == "basic" or monthly_spend >= 50.5', CUSTOMER, True),
    ('plan == "basic" or monthly_spend >= 50.5', {"monthly_spend": 50.5}, True),
    ('(plan != "basic" or monthly_spend >= 50.5) and signup_date < 2026-01-01', {}, False),
    ('(plan != "basic" or monthly_spend >= 50.5) and signup_date < 2026-01-01', CUSTOMER, True),
    (EXAMPLE, CUSTOMER, True),
    (EXAMPLE, {**CUSTOMER, "fraud_flag": True}, False),
    (EXAMPLE, {**CUSTOMER, "fraud_flag": None}, True),
    (EXAMPLE, {**CUSTOMER, "region": "south"}, False),
    ("true", {}, True),
    ("false", CUSTOMER, False),
    ("not false and true", {}, True),
]


@pytest.mark.parametrize(("text", "attributes", "expected"), EVALUATIONS)
def test_evaluation(text: str, attributes: Mapping[str, Any], expected: bool) -> None:
    assert compile_predicate(parse_rule(text, SPECS))(attributes) is expected


_TRUE_FALSE_MISSING: list[dict[str, Any]] = [
    {"fraud_flag": f, "is_vip": v} for f in (True, False, None) for v in (True, False, None)
]


@pytest.mark.parametrize(
    ("text", "truth"),
    [
        ("fraud_flag and is_vip", lambda f, v: f is True and v is True),
        ("fraud_flag or is_vip", lambda f, v: f is True or v is True),
        ("not fraud_flag", lambda f, v: f is not True),
        ("fraud_flag == false", lambda f, v: f is False),
        ("fraud_flag != false", lambda f, v: f is True),
        ("not (fraud_flag and is_vip)", lambda f, v: not (f is True and v is True)),
        ("not fraud_flag or is_vip == false", lambda f, v: f is not True or v is False),
        ("fraud_flag in [true, false]", lambda f, v: f is not None),
        ("fraud_flag not in [true]", lambda f, v: f is False),
    ],
)
def test_boolean_truth_tables(text: str, truth: Callable[[Any, Any], bool]) -> None:
    predicate = compile_predicate(parse_rule(text, SPECS))
    got = [predicate(row) for row in _TRUE_FALSE_MISSING]
    assert got == [truth(row["fraud_flag"], row["is_vip"]) for row in _TRUE_FALSE_MISSING]
    assert got == [
        predicate({k: v for k, v in row.items() if v is not None}) for row in _TRUE_FALSE_MISSING
    ]


# Text and JSON -----------------------------------------------------------------------------------

GOLDEN_JSON = {
    "kind": "and",
    "items": [
        {"kind": "compare", "attribute": "plan", "op": "==", "value": "premium"},
        {"kind": "compare", "attribute": "tenure_months", "op": "<", "value": 12.0},
        {"kind": "in", "attribute": "region", "values": ["north", "east"], "negated": False},
        {
            "kind": "not",
            "item": {"kind": "compare", "attribute": "fraud_flag", "op": "==", "value": True},
        },
    ],
}


def test_json_golden() -> None:
    assert to_json(parse_rule(EXAMPLE, SPECS)) == GOLDEN_JSON
    assert same(from_json(GOLDEN_JSON), parse(EXAMPLE))
    dated = to_json(parse("signup_date < 2026-01-01 or true"))
    assert dated == {
        "kind": "or",
        "items": [
            {
                "kind": "compare",
                "attribute": "signup_date",
                "op": "<",
                "value": {"date": "2026-01-01"},
            },
            {"kind": "const", "value": True},
        ],
    }


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (EXAMPLE, EXAMPLE),
        ("((a)) and (b or c)", "a and (b or c)"),
        ("(a and b) and c", "(a and b) and c"),
        ("(a or b) or c", "(a or b) or c"),
        ("a or (b and c)", "a or b and c"),
        ("not (a or b)", "not (a or b)"),
        ("not (not a)", "not not a"),
        ("(not a) and b", "not a and b"),
        (
            "x==1.50 and y>=-0.0 and z<1e20 and w<1.5e-7",
            "x == 1.5 and y >= -0 and z < 1e+20 and w < 1.5e-07",
        ),
        ("x in [1 , 2,3]", "x in [1, 2, 3]"),
        ("s == 'it\\'s \"q\"\\t\\u0001'", 's == "it\'s \\"q\\"\\t\\u0001"'),
        ("f == true", "f"),
        ("f == false", "f == false"),
        ("d != 0001-01-01", "d != 0001-01-01"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    assert to_text(parse(text)) == canonical
    assert same(parse(canonical), parse(text))


BAD_JSON: list[tuple[Any, str, str]] = [
    ([], "rule", "rule: expected an object, got []"),
    ({"kind": "xor"}, "rule.kind", "rule.kind: unknown kind 'xor'"),
    ({"kind": ["and"]}, "rule.kind", "rule.kind: unknown kind ['and']"),
    (
        {"kind": "compare", "attribute": "plan", "op": ["=="], "value": "x"},
        "rule.op",
        "rule.op: unknown operator ['==']",
    ),
    ({"kind": "not"}, "rule", "rule: a 'not' node has exactly the keys ['item', 'kind']"),
    (
        {"kind": "compare", "attribute": "plan", "op": "=", "value": "x"},
        "rule.op",
        "rule.op: unknown operator '='",
    ),
    (
        {"kind": "compare", "attribute": "a b", "op": "==", "value": "x"},
        "rule.attribute",
        "rule.attribute: not an attribute name: 'a b'",
    ),
    (
        {"kind": "compare", "attribute": "and", "op": "==", "value": "x"},
        "rule.attribute",
        "rule.attribute: not an attribute name: 'and'",
    ),
    (
        {"kind": "compare", "attribute": "x", "op": "==", "value": None},
        "rule.value",
        'rule.value: expected a string, number, boolean or {"date": "YYYY-MM-DD"}, got None',
    ),
    (
        {"kind": "compare", "attribute": "x", "op": "<", "value": {"date": "2026-02-30"}},
        "rule.value",
        'rule.value: expected a string, number, boolean or {"date": "YYYY-MM-DD"}, '
        "got {'date': '2026-02-30'}",
    ),
    (
        {"kind": "in", "attribute": "x", "values": [], "negated": False},
        "rule",
        "rule: 'values' must be a non-empty list and 'negated' a boolean",
    ),
    (
        {"kind": "and", "items": [{"kind": "const", "value": True}]},
        "rule.items",
        "rule.items: 'items' must be a list of at least 2 rules",
    ),
    (
        {"kind": "or", "items": [{"kind": "const", "value": 1}, {"kind": "const", "value": True}]},
        "rule.items.0.value",
        "rule.items.0.value: a const is true or false, got 1",
    ),
]


@pytest.mark.parametrize(("data", "field", "message"), BAD_JSON)
def test_bad_json(data: Any, field: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        from_json(data)
    assert (caught.value.message, caught.value.field) == (message, field)


JSON_WORDS = ["compare", "in", "and", "or", "not", "const", "plan", "==", "<", "2026-01-01"]
JSON_KEYS = ["kind", "items", "item", "value", "values", "negated", "attribute", "op", "date"]
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.sampled_from(JSON_WORDS),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(JSON_KEYS), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(JSON_VALUES)
def test_any_json_gives_an_ast_or_invalid_input(data: Any) -> None:
    try:
        expr: Expr | None = from_json(data)
    except InvalidInput:
        expr = None
    if expr is not None:
        assert same(from_json(to_json(expr)), expr)


def test_deep_json_is_rejected_before_python_recursion_gives_out() -> None:
    data: dict[str, Any] = {"kind": "const", "value": True}
    for _ in range(101):
        data = {"kind": "not", "item": data}
    with pytest.raises(InvalidInput, match="nested more than 100 levels deep"):
        from_json(data)


def test_attributes_of() -> None:
    assert attributes_of(parse(EXAMPLE)) == {"plan", "tenure_months", "region", "fraud_flag"}
    assert attributes_of(parse("true or not (a or b in [1])")) == {"a", "b"}


def test_package_exports_the_language() -> None:
    assert set(rules.__all__) <= set(dir(language))
    assert rules.parse is parse


# Hypothesis: random ASTs over the specs ----------------------------------------------------------


def literals(spec: AttributeSpec) -> st.SearchStrategy[Value]:
    if spec.type == "categorical":
        return st.sampled_from(spec.levels)
    if spec.type == "numeric":
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-99, 99).map(float)
    if spec.type == "boolean":
        return st.booleans()
    return st.dates()


def conditions(spec: AttributeSpec) -> st.SearchStrategy[Expr]:
    ordered = spec.type in ("numeric", "date")
    ops = st.sampled_from(language.OPS if ordered else ("==", "!="))
    return st.builds(Compare, st.just(spec.name), ops, literals(spec)) | st.builds(
        InList,
        st.just(spec.name),
        st.lists(literals(spec), min_size=1, max_size=3).map(tuple),
        st.booleans(),
    )


LEAVES = st.one_of(*(conditions(spec) for spec in SPECS.values()), st.builds(Const, st.booleans()))
EXPRS: st.SearchStrategy[Expr] = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, min_size=2, max_size=3).map(lambda items: And(tuple(items))),
        st.lists(children, min_size=2, max_size=3).map(lambda items: Or(tuple(items))),
        st.builds(Not, children),
    ),
    max_leaves=10,
)


def stored_values(spec: AttributeSpec) -> st.SearchStrategy[Any]:
    """Values as a customer may store them, including missing and wrongly typed ones."""
    typed: st.SearchStrategy[Any] = literals(spec)
    if spec.type == "date":
        typed = typed | st.dates().map(dt.date.isoformat)
    if spec.type == "numeric":
        typed = typed | st.integers(-99, 99)
    strays = st.sampled_from([None, "1", 1, 0.0, True, False, "2026-01-01", NAN, "basic"])
    return typed | strays


CUSTOMERS = st.fixed_dictionaries(
    {}, optional={name: stored_values(s) for name, s in SPECS.items()}
)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def typed(raw: Any, kind: str) -> Any:
    """A stored value if it has the attribute's type, else None (missing)."""
    if kind == "date" and type(raw) is str and len(raw) == 10:
        try:
            return dt.date.fromisoformat(raw)
        except ValueError:
            return None
    allowed = {
        "categorical": (str,),
        "boolean": (bool,),
        "numeric": (int, float),
        "date": (dt.date,),
    }
    if type(raw) not in allowed[kind] or (kind == "numeric" and not math.isfinite(raw)):
        return None
    return raw


def reference(expr: Expr, customer: Mapping[str, Any]) -> bool:
    """A deliberately naive evaluator of the documented semantics, knowing the spec types."""
    if isinstance(expr, And):
        return all(reference(item, customer) for item in expr.items)
    if isinstance(expr, Or):
        return any(reference(item, customer) for item in expr.items)
    if isinstance(expr, Not):
        return not reference(expr.item, customer)
    if isinstance(expr, Const):
        return expr.value
    value = typed(customer.get(expr.attribute), SPECS[expr.attribute].type)
    if value is None:
        return False
    if isinstance(expr, Compare):
        return _COMPARE[expr.op](value, expr.value)
    return (value in expr.values) != expr.negated


@settings(max_examples=300)
@given(EXPRS)
def test_text_and_json_round_trips(expr: Expr) -> None:
    assert same(validate(expr, SPECS), expr)
    assert same(parse(to_text(expr)), expr)
    assert same(parse_rule(to_text(expr), SPECS), expr)
    assert same(from_json(json.loads(json.dumps(to_json(expr)))), expr)
    assert attributes_of(expr) <= set(SPECS)


@settings(max_examples=300)
@given(EXPRS, st.lists(CUSTOMERS, min_size=1, max_size=5))
def test_evaluator_matches_the_reference(expr: Expr, customers: list[dict[str, Any]]) -> None:
    predicate = compile_predicate(expr)
    reparsed = compile_predicate(parse(to_text(expr)))
    for customer in customers:
        expected = reference(expr, customer)
        assert predicate(customer) is expected
        assert reparsed(customer) is expected
        assert compile_predicate(Not(expr))(customer) is not expected
