"""Type and range checks for settings, applied where a value enters (a config's ``__post_init__``,
a function's arguments), so that a bad value fails at once with its name, not later with another.

Every numeric option of every config goes through one of these. Booleans are refused where a
number is expected (``True`` is an ``int`` in Python, never a sensible epoch count), NaN is refused
everywhere, and infinity unless a bound allows it. Wrong types raise ``TypeError``, values out of
range ``ValueError``; both name the setting and the value received.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["SEED_MAX", "check_choice", "check_int", "check_number", "check_report_to"]

#: The largest seed numpy's and torch's generators take (2**32 - 1).
SEED_MAX = 2**32 - 1


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_int(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None, optional: bool = False
) -> int | None:
    """``value`` as an ``int`` within ``[minimum, maximum]``; ``None`` passes when ``optional``.

    An integral float (``5.0``, as JSON and YAML files may hold) is accepted and returned as ``5``;
    ``1.5``, ``True``, ``"5"`` and NaN are not.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {_describe(value)}")
    if not isinstance(value, numbers.Integral):
        if not math.isfinite(value) or value != int(value):
            raise TypeError(f"{name} must be an integer, got {_describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


def check_number(
    value: Any,
    name: str,
    *,
    above: float | None = None,
    minimum: float | None = None,
    below: float | None = None,
    maximum: float | None = None,
    optional: bool = False,
    finite: bool = True,
) -> float | None:
    """``value`` as a ``float`` in the range the bounds give (``above``/``below`` exclusive,
    ``minimum``/``maximum`` inclusive); NaN is always refused, infinity when ``finite``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {_describe(value)}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    checks = (
        (above, lambda b: value > b, "greater than"),
        (minimum, lambda b: value >= b, "at least"),
        (below, lambda b: value < b, "less than"),
        (maximum, lambda b: value <= b, "at most"),
    )
    for bound, holds, words in checks:
        if bound is not None and not holds(bound):
            expected = _range_words(above, minimum, below, maximum) or f"{words} {bound:g}"
            raise ValueError(f"{name} must be {expected}, got {value:g}")
    return value


def _range_words(above, minimum, below, maximum) -> str:
    """``in (0, 1]``-style text when both ends are bounded, else ``''`` (the caller words one bound)."""
    low = ("(", above) if above is not None else ("[", minimum) if minimum is not None else None
    high = (")", below) if below is not None else ("]", maximum) if maximum is not None else None
    if low is None or high is None:
        return ""
    return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"


def check_choice(value: Any, name: str, choices: tuple[str, ...] | list[str]) -> str:
    """``value`` if it is one of ``choices``; else a ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def check_report_to(value: Any, name: str) -> str | list[str]:
    """A Trainer ``report_to`` value (``"none"``, ``"all"``, a logger name or a list of them): each
    name must be a logger transformers knows, and installed, so that a typo or a missing package is
    one line now rather than a traceback when the first stage starts."""
    import difflib

    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{name} must be a logger name or a list of them, got {_describe(value)}")
    if names in (["none"], ["all"]) or names == []:
        return value
    available = get_available_reporting_integrations()
    for logger_name in names:
        if logger_name not in INTEGRATION_TO_CALLBACK:
            close = difflib.get_close_matches(logger_name, list(INTEGRATION_TO_CALLBACK), n=1)
            hint = (
                f"; did you mean {close[0]}"
                if close
                else f"; known: none, all, {', '.join(sorted(INTEGRATION_TO_CALLBACK))}"
            )
            raise ValueError(f"{name}: unknown logger '{logger_name}'{hint}")
        if logger_name not in available:
            raise ValueError(
                f"{name}: '{logger_name}' is not installed (pip install {logger_name.replace('_', '-')})"
            )
    return value
