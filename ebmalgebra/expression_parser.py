"""Parse expressions such as ``glasses & (face & ~hat) ** 0.75`` into models, without ``eval``.

Grammar (Python's precedence and associativity, loosest first)::

    expression := product ("|" product)*            mixture
    product    := scaled ("&" scaled)*              product of experts
    scaled     := unary ("*" unary)*                weight: number * model, model * number
    unary      := ("~" | "-" | "+") unary | power   inverse / sign of a number
    power      := atom ("**" unary)?                tempering, right-associative
    atom       := call | NAME | NUMBER | "(" expression ")"
    call       := NAME "(" [argument ("," argument)*] ")"
    argument   := NAME "=" expression | expression

So ``~a ** 2`` is ``~(a ** 2)``, ``a ** -1`` is ``~a``, ``2 * a & b`` is
``(2 * a) & b`` and ``a & b | c`` is ``(a & b) | c``. A call builds an
operator that prints as ``name(child, …, key=value)``: the library's
``without(glasses, hat, face, log_odds=8)`` and every
:class:`~ebmalgebra.operator.Operator` registered with
:func:`ebmalgebra.io.register_operator` (a user's ``smin(a, b, tau=0.5)``), so
what ``repr`` prints parses back. Names are looked up in
a mapping (e.g. the zoo); a name used twice is the same leaf, so
``glasses & glasses ** 2`` evaluates ``glasses`` once per call.

Any problem raises :class:`ExpressionError`, whose message shows the text
with a caret under the offending character::

    unknown model 'hta'; did you mean 'hat'?
      glasses & hta
                ^
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ebmalgebra.base import EnergyModel
from ebmalgebra.errors import ArgumentTypeError, EBMAlgebraError, ExpressionError

__all__ = ["ExpressionError", "parse_expression", "registered_operators"]

Value = EnergyModel | float

MAX_NESTING = 100
"""Deepest nesting of parentheses and prefix or ``**`` operators that :func:`parse_expression`
accepts: the recursive descent takes a few Python frames per level, and deeper text would
hit Python's recursion limit instead of a positioned :class:`ExpressionError`."""



@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "number", an operator or parenthesis, or "end"
    text: str
    position: int


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\*\*|[&|~*()+,=-])
""", re.VERBOSE)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ExpressionError(f"unexpected character {text[position]!r}", text, position)
        kind = match.lastgroup
        if kind != "space":
            token_text = match.group()
            tokens.append(_Token(token_text if kind == "op" else kind, token_text, position))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent over the grammar above, evaluating as it goes."""

    def __init__(self, text: str, lookup: Callable[[str, int], EnergyModel]) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.lookup = lookup
        self.depth = 0

    # -- helpers
    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.current
        self.index += 1
        return token

    def fail(self, reason: str, position: int) -> ExpressionError:
        return ExpressionError(reason, self.text, position)

    def model(self, value: Value, position: int, operator: str) -> EnergyModel:
        if not isinstance(value, EnergyModel):
            raise self.fail(f"{operator!r} needs a model here, but this is the number "
                            f"{_number(value)}", position)
        return value

    def apply(self, build: Callable[[], Value], position: int) -> Value:
        """Run an algebra operation, turning its errors into positioned ones."""
        try:
            return build()
        except EBMAlgebraError as error:
            raise self.fail(str(error), position) from None

    # -- grammar
    def parse(self) -> EnergyModel:
        if self.current.kind == "end":
            raise self.fail("empty expression", 0)
        start = self.current.position
        value = self.expression()
        if self.current.kind != "end":
            token = self.current
            hint = ("; did you forget an operator?" if token.kind in ("name", "number", "(")
                    else "")
            raise self.fail(f"unexpected {_describe(token)}{hint}", token.position)
        if not isinstance(value, EnergyModel):
            raise self.fail(f"the expression is the number {_number(value)}, not a model",
                            start)
        return value

    def expression(self) -> Value:
        start = self.current.position
        value = self.product()
        while self.current.kind == "|":
            operator = self.advance()
            right_start = self.current.position
            right = self.product()
            left = self.model(value, start, "|")
            right = self.model(right, right_start, "|")
            value = self.apply(lambda a=left, b=right: a | b, operator.position)
        return value

    def product(self) -> Value:
        start = self.current.position
        value = self.scaled()
        while self.current.kind == "&":
            operator = self.advance()
            right_start = self.current.position
            right = self.scaled()
            left = self.model(value, start, "&")
            right = self.model(right, right_start, "&")
            value = self.apply(lambda a=left, b=right: a & b, operator.position)
        return value

    def scaled(self) -> Value:
        value = self.unary()
        while self.current.kind == "*":
            operator = self.advance()
            right = self.unary()
            if isinstance(value, EnergyModel) and isinstance(right, EnergyModel):
                raise self.fail("'*' multiplies a model by a number; use '&' for the product "
                                "of two models", operator.position)
            value = self.apply(lambda a=value, b=right: a * b, operator.position)
        return value

    def unary(self) -> Value:
        # Every level of nesting, '(' … ')', '~', '-' or '**', passes through here once.
        if self.depth >= MAX_NESTING:
            raise self.fail(f"the expression nests deeper than {MAX_NESTING} levels "
                            "(parentheses, '~', '-' or '**'); simplify it",
                            self.current.position)
        self.depth += 1
        try:
            return self._unary()
        finally:
            self.depth -= 1

    def _unary(self) -> Value:
        token = self.current
        if token.kind == "~":
            self.advance()
            operand_start = self.current.position
            operand = self.model(self.unary(), operand_start, "~")
            return self.apply(lambda: ~operand, token.position)
        if token.kind in ("-", "+"):
            self.advance()
            operand_start = self.current.position
            operand = self.unary()
            if isinstance(operand, EnergyModel):
                raise self.fail(f"{token.text!r} applies to numbers; use '~model' or "
                                "'model ** -1' for the inverse of a model", operand_start)
            return -operand if token.kind == "-" else operand
        return self.power()

    def power(self) -> Value:
        base = self.atom()
        if self.current.kind != "**":
            return base
        operator = self.advance()
        exponent_start = self.current.position
        exponent = self.unary()
        if isinstance(exponent, EnergyModel):
            raise self.fail("the exponent must be a number", exponent_start)
        if isinstance(base, EnergyModel):
            return self.apply(lambda: base**exponent, operator.position)
        try:
            result = base**exponent
        except (OverflowError, ZeroDivisionError) as error:
            raise self.fail(f"cannot compute {_number(base)} ** {_number(exponent)}: {error}",
                            operator.position) from None
        if not isinstance(result, float) or not math.isfinite(result):
            raise self.fail(f"{_number(base)} ** {_number(exponent)} is not a finite real "
                            "number", operator.position)
        return result

    def atom(self) -> Value:
        token = self.current
        if token.kind == "number":
            self.advance()
            value = float(token.text)
            if not math.isfinite(value):
                raise self.fail(f"number {token.text} is too large", token.position)
            return value
        if token.kind == "name":
            self.advance()
            if self.current.kind == "(":
                return self.call(token)
            return self.lookup(token.text, token.position)
        if token.kind == "(":
            self.advance()
            value = self.expression()
            if self.current.kind != ")":
                raise self.fail(f"expected ')' to close the '(' at position {token.position}, "
                                f"found {_describe(self.current)}", self.current.position)
            self.advance()
            return value
        raise self.fail(f"expected a name, a number or '(', found {_describe(token)}",
                        token.position)

    def call(self, name: _Token) -> EnergyModel:
        operator = self.operator(name)
        opening = self.advance()
        positional: list[Value] = []
        keywords: dict[str, Value] = {}
        while self.current.kind != ")":
            if self.current.kind == "name" and self.tokens[self.index + 1].kind == "=":
                key = self.advance()
                self.advance()
                if key.text in keywords:
                    raise self.fail(f"{name.text}: argument {key.text!r} is given twice",
                                    key.position)
                value_start = self.current.position
                value = self.expression()
                if isinstance(value, EnergyModel):
                    raise self.fail(f"{name.text}: keyword argument {key.text!r} takes a "
                                    "number; models are positional", value_start)
                keywords[key.text] = value
            elif keywords:
                raise self.fail(f"{name.text}: a positional argument follows a keyword "
                                "argument", self.current.position)
            else:
                positional.append(self.expression())
            if self.current.kind != ",":
                break
            self.advance()
        if self.current.kind != ")":
            raise self.fail(f"expected ',' or ')' in the call of {name.text!r} opened at "
                            f"position {opening.position}, found {_describe(self.current)}",
                            self.current.position)
        self.advance()
        # The class's own signature (the metaclass's __call__ takes anything), shown
        # without ``self`` and annotations.
        parameters = list(inspect.signature(operator.__init__).parameters.values())[1:]
        signature = inspect.Signature([parameter.replace(annotation=inspect.Parameter.empty)
                                       for parameter in parameters])
        try:
            signature.bind(*positional, **keywords)
            result = operator(*positional, **keywords)
        except (EBMAlgebraError, TypeError, ValueError) as error:
            raise self.fail(f"{name.text}{signature}: {error}", name.position) from None
        return self.model(result, name.position, name.text)

    def operator(self, name: _Token) -> Callable[..., EnergyModel]:
        operators = registered_operators()
        if name.text in operators:
            return operators[name.text]
        raise self.fail(_unknown("operator", name.text, sorted(operators)), name.position)


def registered_operators() -> dict[str, type[EnergyModel]]:
    """Operators callable by name in expressions: name → class.

    Every :class:`~ebmalgebra.operator.Operator` registered with
    :func:`ebmalgebra.io.register_operator` whose printed form is a call
    (``symbol`` an identifier, or the class name when ``symbol`` is empty).
    """
    from ebmalgebra.io.registry import OPERATORS, ensure_builtins
    from ebmalgebra.operator import Operator

    ensure_builtins()
    table: dict[str, type[EnergyModel]] = {}
    for entry in OPERATORS.by_name.values():
        if isinstance(entry.cls, type) and issubclass(entry.cls, Operator):
            name = entry.cls.symbol or entry.cls.__name__
            if name.isidentifier():
                table[name] = entry.cls
    return table


def _unknown(kind: str, name: str, known: list[str]) -> str:
    """"unknown model 'hta'; did you mean 'hat'?", else the ``known`` names listed."""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown {kind} {name!r}; did you mean {close[0]!r}?"
    return f"unknown {kind} {name!r}" + (f" (known: {', '.join(known)})" if known else "")


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the expression"
    return f"{token.kind} {token.text!r}" if token.kind in ("name", "number") else \
        f"{token.text!r}"


def _number(value: float) -> str:
    from ebmalgebra.base import format_number

    return format_number(value)


def parse_expression(
    text: str,
    models: Mapping[str, EnergyModel] | Callable[[str], EnergyModel | None],
) -> EnergyModel:
    """Build the model that ``text`` describes, with names resolved by ``models``.

    Args:
        text: e.g. ``"glasses & hat ** 2"`` (grammar in the module docstring).
        models: a mapping name → model, or a function returning the model for a
            name (``None`` or ``KeyError`` for unknown names). Each name is
            resolved once per call, so repeated names share one leaf.

    Raises:
        ExpressionError: syntax errors, unknown names, names bound to something
            other than an EnergyModel, numbers where models are needed (and the
            reverse), invalid weights; the message points at the position.

    Example:
        >>> from ebmalgebra.targets import Bar, Ring
        >>> parse_expression("ring & bar ** 2", {"ring": Ring(name="ring"), "bar": Bar()})
        ring & bar ** 2
    """
    if not isinstance(text, str):
        raise ArgumentTypeError(f"parse_expression expects a string, got {type(text).__name__}")
    resolved: dict[str, EnergyModel] = {}

    def lookup(name: str, position: int) -> EnergyModel:
        if name in resolved:
            return resolved[name]
        try:
            model = models[name] if isinstance(models, Mapping) else models(name)
        except KeyError:
            model = None
        if model is None and name in registered_operators():
            raise ExpressionError(f"{name!r} is an operator: call it, {name}(...)", text,
                                  position)
        if model is None:
            known = sorted(models) if isinstance(models, Mapping) else []
            known = [other for other in known if other != name]  # bound to None
            raise ExpressionError(_unknown("model", name, known), text, position)
        if not isinstance(model, EnergyModel):
            raise ExpressionError(f"{name!r} names a {type(model).__name__}, not a model "
                                  "(an EnergyModel)", text, position)
        resolved[name] = model
        return model

    return _Parser(text, lookup).parse()
