"""How a method's settings are declared, converted and checked, and the defaults several share.

A method's settings are a frozen dataclass derived from :class:`MethodConfig`, one field per
setting. A field that has a constraint declares it where it is defined, with :func:`setting`::

    tiles: int = setting(1, at_least=1, note="tiles per side")
    border: str = setting("zero", choices=("zero", "reflect"))
    degrees: tuple[int, ...] = setting((1, 3, 5), at_least=1, odd=True)
    looks_gate: float | None = setting(0.89, above=0.0, at_most=1.0)

:meth:`MethodConfig.__post_init__` checks every declared constraint (and the declared type of
each constrained value) for every config, however it was built (``from_options``, the
constructor, ``dataclasses.replace``), and refuses a value in one sentence naming the config,
the setting, the value and what is allowed. A subclass that re-declares a field with a plain
default keeps its parent's constraint; rules that tie several settings together go in
:meth:`MethodConfig.check`. Free values outside a config (the CLI's ``--false-alarm-rate``) use
the same rules through :func:`require`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Mapping, Union

from defectscope.errors import ConfigError

DEFAULT_FALSE_ALARM_RATE = 0.05
"""Share of normal images a verdict may flag (``--false-alarm-rate``, every method)."""
DEFAULT_REVIEW_BUDGET = 0.2
"""Largest share of a batch the verdict may send to review (``--review-budget``)."""
DEFAULT_KSHOT = 10
"""Labelled defects per defect type moved from test to training for PRN (``--kshot``)."""

_RULE = "defectscope.rule"
"""The ``dataclasses.field`` metadata key holding a field's :class:`Rule`."""


@dataclass(frozen=True)
class Rule:
    """What values one setting (or each item of a tuple setting) may take.

    Bounds: ``at_least`` (>=), ``above`` (>), ``at_most`` (<=), ``below`` (<); ``choices``: the
    only values allowed; ``odd``: odd integers only; ``multiple_of``: integers divisible by it;
    ``note``: a few words on the unit or the reason, shown in the refusal. A rule on a tuple
    setting applies to each item, and the tuple may not be empty (``Rule()``: only that).
    """

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    choices: tuple[Any, ...] | None = None
    odd: bool = False
    multiple_of: int | None = None
    note: str = ""

    def fits(self, value: Any) -> bool:
        """Whether one (already type-checked) value is allowed."""
        if self.choices is not None:
            return value in self.choices
        if (self.odd and int(value) % 2 == 0) or (self.multiple_of and int(value) % self.multiple_of):
            return False
        return not (
            (self.at_least is not None and value < self.at_least)
            or (self.above is not None and value <= self.above)
            or (self.at_most is not None and value > self.at_most)
            or (self.below is not None and value >= self.below)
        )

    def bounds(self) -> str:
        """The allowed range in words: "in [0, 0.5]", ">= 1", "one of zero, reflect" ('' when free)."""
        if self.choices is not None:
            return "one of " + ", ".join(str(choice) for choice in self.choices)
        multiple = f"a multiple of {self.multiple_of}" if self.multiple_of else ""
        return " and ".join(part for part in (self._range(), multiple) if part)

    def _range(self) -> str:
        low = (self.at_least, "[") if self.at_least is not None else (self.above, "(") if self.above is not None else None
        high = (self.at_most, "]") if self.at_most is not None else (self.below, ")") if self.below is not None else None
        if low is not None and high is not None:
            return f"in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
        if low is not None:
            return f"{'>=' if low[1] == '[' else '>'} {low[0]:g}"
        if high is not None:
            return f"{'<=' if high[1] == ']' else '<'} {high[0]:g}"
        return ""


_KINDS = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "true/false values"), str: ("text", "names")}


def _kind_fits(value: Any, kind: Any) -> bool:
    """Whether ``value`` has the declared scalar type ``kind`` (int, float, str, bool, a union of them)."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        return any(_kind_fits(value, option) for option in typing.get_args(kind))
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(float(value))
    if kind is str:
        return isinstance(value, str)
    return True


def _layout(hint: Any) -> tuple[bool, int | None, Any]:
    """(None allowed, tuple length (-1: any, None: not a tuple), item type) of a declared type."""
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType) and type(None) in typing.get_args(hint):
        optional = True
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else Union[tuple(rest)]
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return optional, -1, args[0]
        return optional, len(args), args[0]
    return optional, None, hint


def allowed(rule: Rule, hint: Any) -> str:
    """What a setting of declared type ``hint`` under ``rule`` may be, in words."""
    optional, length, kind = _layout(hint)
    bounds = rule.bounds()
    if rule.choices is not None:
        text = bounds
    elif length is None:
        text = f"{_describe(kind)} {bounds}".strip()
    else:
        odd = "odd " if rule.odd else ""
        count = "a comma-separated list of" if length == -1 else f"{length} comma-separated"
        text = f"{count} {odd}{_describe(kind, plural=True)} {bounds}".strip()
    if rule.choices is None and rule.odd and length is None:
        text = "an odd " + text.removeprefix("an ")
    if optional:
        text += " or none"
    return text + (f" ({rule.note})" if rule.note else "")


def value_fits(value: Any, rule: Rule, hint: Any) -> bool:
    """Whether ``value`` has the declared type ``hint`` and keeps ``rule`` (each item of a tuple)."""
    optional, length, kind = _layout(hint)
    if value is None:
        return optional
    items = [value]
    if length is not None:
        if not isinstance(value, tuple) or not value or (length > 0 and len(value) != length):
            return False
        items = list(value)
    return all(_kind_fits(item, kind) and rule.fits(item) for item in items)


def require(name: str, value: Any, rule: Rule, hint: Any = float) -> Any:
    """``value`` when it fits ``rule`` (a float for a ``float`` hint), else ConfigError in one
    sentence: ``{name}={value} is invalid: expected {what is allowed}``."""
    if not value_fits(value, rule, hint):
        raise ConfigError(f"{name}={_shown(value)} is invalid: expected {allowed(rule, hint)}")
    return float(value) if hint is float else value


def setting(default: Any = dataclasses.MISSING, rule: Rule | None = None, **constraint: Any) -> Any:
    """A dataclass field with its constraint: ``setting(0.25, at_least=0, at_most=0.5)``, or a
    shared :class:`Rule` (``setting(DEFAULT_FALSE_ALARM_RATE, FALSE_ALARM_RATE)``). Keywords are
    :class:`Rule`'s. Tuple defaults stay tuples (immutable), so no factory is needed."""
    if rule is not None and constraint:
        raise TypeError("give either a Rule or its keywords, not both")
    return dataclasses.field(default=default, metadata={_RULE: rule or Rule(**constraint)})


FALSE_ALARM_RATE = Rule(above=0.0, below=1.0, note="the share of normal images the verdict may flag")
REVIEW_BUDGET = Rule(at_least=0.0, at_most=1.0, note="the largest share of the batch sent to review")


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null")


class _BadValue(ValueError):
    """A value that does not fit a declared type (turned into a ConfigError naming the key)."""


def _describe(hint: Any, plural: bool = False) -> str:
    """Human words for a declared type, e.g. 'a comma-separated list of integers'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        parts = [_describe(a, plural) for a in args if a is not type(None)]
        return " or ".join(parts + (["none"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a comma-separated list of {_describe(args[0], plural=True)}"
        return f"{len(args)} comma-separated values ({', '.join(_describe(a) for a in args)})"
    return _KINDS[hint][plural] if hint in _KINDS else str(hint)


def _split(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _coerce_number(text: str | None, kind: type) -> Any:
    if text is None:
        raise _BadValue
    try:
        return kind(text)
    except ValueError:
        raise _BadValue from None


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` (the CLI's text or a Python value) as the declared type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    text = value.strip() if isinstance(value, str) else None
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None or (text is not None and text.lower() in _NONE):
            if type(None) in args:
                return None
            raise _BadValue
        # Text last: "8" for ``str | int`` is the int 8, "stride8" stays text.
        for option in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _coerce(value, option)
            except _BadValue:
                continue
        raise _BadValue
    if origin is Literal:
        for choice in args:
            if value == choice or (text is not None and text == str(choice)):
                return choice
        raise _BadValue
    if origin is tuple:
        items = _split(value)
        if not items:
            raise _BadValue
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(item, args[0]) for item in items)
        if len(items) != len(args):
            raise _BadValue
        return tuple(_coerce(item, kind) for item, kind in zip(items, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise _BadValue
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return _coerce_number(text, int)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return _coerce_number(text, float)
    if hint is str:
        if text is None:
            raise _BadValue
        return text
    return value


def to_text(value: Any) -> str:
    """The CLI's string form of a config value (inverse of the conversion in ``from_options``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(to_text(item) for item in value)
    return str(value)


def _shown(value: Any) -> str:
    """A value as the refusal shows it: its CLI text, ``''`` when that is empty."""
    return to_text(value) or "''"


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's settings dataclass (frozen, one field per setting).

    Constraints are declared with the field (:func:`setting`) and checked in
    :meth:`__post_init__`, so every config is checked however it is built; rules over several
    fields go in :meth:`check`. A tuple setting given as a list (or a single value) is stored as
    a tuple.

    :meth:`from_options` builds a config from ``--param`` strings (or Python values), converting
    each to the field's declared type: ``int``, ``float``, ``bool`` (true/false, yes/no, on/off,
    1/0), ``str``, ``X | None`` ("none"), ``tuple[X, ...]`` ("1,3,5" or a single "3"), fixed
    tuples, ``Literal`` choices. Unknown keys and values that do not fit are refused with one
    sentence naming the key, the value and the expected type.

    Converting a config that still checks its settings by hand in its own ``__post_init__``
    (U-Flow's, PRN's): put each one-field check on the field as ``setting(default, ...)``
    (``x > 0``: ``above=0``; ``0 <= x < 1``: ``at_least=0, below=1``; ``x in (...)``:
    ``choices=(...)``; odd: ``odd=True``; a check on every item of a tuple: the same keywords on
    the tuple field), move the checks that involve several fields into ``check()`` (raising
    ConfigError with one sentence), keep any normalising into ``check()`` too (lists become
    tuples here already), and delete the class's own ``__post_init__`` so that this one runs.
    """

    def __post_init__(self) -> None:
        hints, rules = self.field_types(), self.rules()
        for name, hint in hints.items():
            value = getattr(self, name)
            if _layout(hint)[1] is not None and isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, name, value)
            elif _layout(hint)[1] == -1 and value is not None and not isinstance(value, tuple):
                value = (value,)
                object.__setattr__(self, name, value)
            rule = rules.get(name)
            if rule is not None and not value_fits(value, rule, hint):
                raise ConfigError(
                    f"{type(self).__name__} setting {name}={_shown(value)} is invalid: expected {allowed(rule, hint)}"
                )
        self.check()

    def check(self) -> None:
        """Rules that involve several settings (override; raise ConfigError in one sentence)."""

    def refuse(self, problem: str) -> None:
        """Raise ConfigError: ``{config class} {problem}``."""
        raise ConfigError(f"{type(self).__name__} {problem}")

    @classmethod
    def rules(cls) -> dict[str, Rule]:
        """Setting name -> its declared :class:`Rule`, inherited from a parent class when a
        subclass re-declares the field with a plain default."""
        found: dict[str, Rule] = {}
        for klass in reversed(cls.__mro__):
            for item in getattr(klass, "__dataclass_fields__", {}).values():
                if _RULE in item.metadata:
                    found[item.name] = item.metadata[_RULE]
        return found

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Setting name -> declared type (resolved annotations)."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in fields(cls)}

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> "MethodConfig":
        """A config from ``{setting: value}``; values may be the CLI's strings."""
        types_ = cls.field_types()
        unknown = sorted(set(values) - set(types_))
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(types_))}"
            )
        converted = {}
        for key, value in values.items():
            try:
                converted[key] = _coerce(value, types_[key])
            except _BadValue:
                raise ConfigError(
                    f"{cls.__name__} setting {key}={to_text(value)!r} is invalid: expected {_describe(types_[key])}"
                ) from None
        return cls(**converted)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict of the settings (tuples as lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}
