"""Tests for ebmalgebra/expression_parser.py: the grammar of expression strings."""

from __future__ import annotations

import pytest
import torch

from ebmalgebra.expression_parser import MAX_NESTING, ExpressionError, parse_expression
from ebmalgebra.targets import Bar, Gaussian, Ring


@pytest.fixture(scope="module")
def names() -> dict:
    return {"a": Gaussian(torch.zeros(2), 1.0, name="a"),
            "b": Gaussian(torch.ones(2), 2.0, name="b"),
            "c": Ring(name="c"), "hat": Bar(name="hat"),
            "g3": Gaussian(torch.zeros(3), 1.0, name="g3")}


@pytest.mark.parametrize("text, expected", [
    ("a & b", "a & b"),
    ("a | b & c", "a | b & c"),            # & binds tighter than |
    ("(a | b) & c", "(a | b) & c"),
    ("2 * a & b", "2 * a & b"),             # * binds tighter than &
    ("a * 2 | 3 * b", "2 * a | 3 * b"),
    ("~a ** 2", "a ** -2"),                 # ** binds tighter than unary ~
    ("(~a) ** 2", "a ** -2"),
    ("a ** -1", "~a"),                      # the exponent may carry a sign
    ("a ** 2 ** 0.5", "a ** 1.4142135623730951"),  # ** is right-associative
    ("a ** -2 ** 2", "a ** -4"),            # -2 ** 2 is -(2 ** 2), as in Python
    ("a ** (0.5 * 3)", "a ** 1.5"),
    ("a & (b & ~hat) ** 0.75", "a & (b & ~hat) ** 0.75"),
    ("0.5*a|0.5*b", "0.5 * a | 0.5 * b"),
    ("  a\t&\nb ", "a & b"),
    ("a & 1e-1 * b", "a & 0.1 * b"),
    ("~~a", "a"),
])
def test_expressions_parse_with_python_precedence(names, text, expected):
    assert repr(parse_expression(text, names)) == expected


def test_a_repeated_name_is_one_shared_leaf(names):
    expr = parse_expression("a & a ** 2 | a", names)
    assert len(list(expr.leaves())) == 1


@pytest.mark.parametrize("text, message, position", [
    ("", "empty expression", 0),
    ("a &", "expected a name, a number or '('", 3),
    ("a & hta", "unknown model 'hta'; did you mean 'hat'?", 4),
    ("a & zzz", "unknown model 'zzz' (known: a, b, c, g3, hat)", 4),
    ("a b", "unexpected name 'b'; did you forget an operator?", 2),
    ("(a & b", "expected ')' to close the '(' at position 0", 6),
    ("a & b)", "unexpected ')'", 5),
    ("a & 2", "'&' needs a model here, but this is the number 2", 4),
    ("2 | a", "'|' needs a model here, but this is the number 2", 0),
    ("3", "the expression is the number 3, not a model", 0),
    ("a * b", "'*' multiplies a model by a number", 2),
    ("-a", "'-' applies to numbers", 1),
    ("~2", "'~' needs a model here", 1),
    ("a ** b", "the exponent must be a number", 5),
    ("a $ b", "unexpected character '$'", 2),
    ("-2 * a", "weight must be positive", 3),
    ("a & g3", "event shapes differ", 2),
    ("a ** 1e999", "too large", 5),
    ("0 ** -1 * a", "cannot compute 0 ** -1", 2),
    ("(-8) ** 0.5 * a", "not a finite real number", 5),
    ("__import__('os')", "unexpected character \"'\"", 11),
    ("__import__(os)", "unknown operator '__import__'", 0),
    # calls of registered operators
    ("withot(a, b, c)", "unknown operator 'withot'; did you mean 'without'?", 0),
    ("without(a, b)", "without(a, b, reference, log_odds=0.0): missing a required "
                      "argument: 'reference'", 0),
    ("a & without(a, b, c, odds=1)", "got an unexpected keyword argument 'odds'", 4),
    ("without(a, b, c, log_odds=1, log_odds=2)", "argument 'log_odds' is given twice", 29),
    ("without(a, log_odds=1, b, c)", "a positional argument follows a keyword", 23),
    ("without(a, b, c, log_odds=a)", "keyword argument 'log_odds' takes a number", 26),
    ("without(a, b, c", "expected ',' or ')' in the call of 'without' opened at position 7",
     15),
    ("without(a b)", "expected ',' or ')'", 10),
    ("without(2, b, c)", "without expects EnergyModels, got float", 0),
    ("without(a, b, g3)", "event shapes differ", 0),
    ("without & a", "'without' is an operator: call it, without(...)", 0),
    ("without(a, , c)", "expected a name, a number or '('", 11),
])
def test_bad_expressions_raise_with_the_position(names, text, message, position):
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text, names)
    error = caught.value
    assert message in error.reason
    assert error.position == position
    # The message shows the text and a caret under the offending character.
    *_, shown, caret = str(error).splitlines()
    assert shown == f"  {text}" and caret == "  " + " " * position + "^"


def test_the_parser_never_evaluates_python(names, monkeypatch):
    import builtins

    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec must not be used")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert repr(parse_expression("a & b ** 2", names)) == "a & b ** 2"


def test_lookup_may_be_a_function(names):
    assert repr(parse_expression("a & b", names.get)) == "a & b"
    with pytest.raises(ExpressionError, match="unknown model 'nope'"):
        parse_expression("nope", names.get)


@pytest.mark.parametrize("value", [torch.nn.Linear(2, 1), "a", 2.0],
                         ids=["module", "string", "number"])
def test_a_name_bound_to_a_non_model_is_named_at_its_position(names, value):
    # Regression: the value reached the operators, and the message formatting failed with
    # "float() argument must be a string or a real number, not 'Linear'".
    with pytest.raises(ExpressionError) as caught:
        parse_expression("a & net", {"a": names["a"], "net": value})
    assert f"'net' names a {type(value).__name__}, not a model" in str(caught.value)
    assert caught.value.position == 4


def test_a_name_bound_to_none_is_unknown_without_suggesting_itself(names):
    with pytest.raises(ExpressionError) as caught:
        parse_expression("a & x", {"a": names["a"], "x": None})
    assert caught.value.reason == "unknown model 'x' (known: a)"


def test_nesting_up_to_the_limit_parses(names):
    depth = MAX_NESTING - 1
    assert repr(parse_expression("(" * depth + "c" + ")" * depth, names)) == "c"
    assert repr(parse_expression("~" * depth + "c", names)) == "~c"  # depth is odd


# -------------------------------------------------------------------- calls
def test_a_call_builds_the_registered_operator_and_reprs_parse_back(names):
    a, b, c = names["a"], names["b"], names["c"]
    expr = parse_expression("without(a, b, c, log_odds=-1.5) & c ** 2", names)
    assert repr(expr) == "without(a, b, c, log_odds=-1.5) & c ** 2"
    assert repr(parse_expression(repr(expr), names)) == repr(expr)
    x = torch.randn(9, 2)
    # E_a + softplus(E_c − E_b + λ) + 2 E_c, from the leaves' own energies.
    expected = (a.energy(x) + torch.nn.functional.softplus(c.energy(x) - b.energy(x) - 1.5)
                + 2 * c.energy(x))
    torch.testing.assert_close(expr.energy(x), expected)


@pytest.mark.parametrize("build", [
    lambda a, b: a.normalized() ** 2,
    lambda a, b: 0.25 * a.normalized() | (a & b).normalized(log_z=-1.5),
    lambda a, b: ~(a & b).normalized(2.0),
], ids=["default-log-z", "given-log-z", "inverse"])
def test_normalized_nodes_print_in_a_form_that_parses_back(names, build):
    a, b = names["a"], names["b"]
    expr = build(a, b)
    parsed = parse_expression(repr(expr), names)
    assert repr(parsed) == repr(expr)
    x = torch.randn(6, 2)
    torch.testing.assert_close(parsed.energy(x), expr.energy(x))


def test_call_arguments_may_be_expressions(names):
    expr = parse_expression("without(a & b, b ** 2, 0.5 * c | a, log_odds=2 ** 3)", names)
    assert repr(expr) == "without(a & b, b ** 2, 0.5 * c | a, log_odds=8)"
    assert repr(parse_expression("without(a, b, c,)", names)) == "without(a, b, c, log_odds=0)"


def test_the_library_operators_with_call_forms_are_registered():
    from ebmalgebra.expression_parser import registered_operators
    from ebmalgebra.negation import Without
    from ebmalgebra.ops import Mixture, Product

    operators = registered_operators()
    assert operators["without"] is Without
    # Infix operators are parsed by their symbols, not called.
    assert Product not in operators.values() and Mixture not in operators.values()
