"""What every settings area shares: the field helper, value parsing, bounds and the error.

A field is a dataclass field whose metadata names its environment variable, its
documentation, whether its value is a secret (the README shows no default then) and,
optionally, its bounds, which `check_bounds` enforces for every field at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class SettingsError(ValueError):
    """A configuration variable holds a value FlickrHub cannot use."""


def setting(
    name: str,
    default: Any,
    doc: str,
    *,
    secret: bool = False,
    at_least: float | None = None,
    at_most: float | None = None,
    positive: bool = False,
) -> Any:
    """A field read from environment variable `name`; `doc` is its line in the README table.

    Bounds, checked at start: `at_least` / `at_most` (inclusive), `positive` (above 0).
    """
    bounds = {"at_least": at_least, "at_most": at_most, "positive": positive}
    return dataclasses.field(default=default, metadata={"env": name, "doc": doc, "secret": secret, **bounds})


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


# Field types are strings under `from __future__ import annotations`.
_PARSERS: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str, "bool": _parse_bool}


def parse(f: dataclasses.Field[Any], raw: str) -> Any:
    """The value of field `f` written as `raw`; SettingsError naming its variable when it is not one."""
    try:
        return _PARSERS[str(f.type)](raw)
    except ValueError as exc:
        raise SettingsError(f"{f.metadata['env']}: {exc}") from None


def check_bounds(settings: DataclassInstance) -> None:
    """Every field within the bounds its definition gives."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        low, high, positive = f.metadata["at_least"], f.metadata["at_most"], f.metadata["positive"]
        problem = ""
        if positive and value <= 0:
            problem = "must be positive"
        elif low is not None and high is not None and not low <= value <= high:
            problem = f"must be between {low} and {high}"
        elif low is not None and value < low:
            problem = "must not be negative" if low == 0 else f"must be at least {low}"
        elif high is not None and value > high:
            problem = f"must be at most {high}"
        if problem:
            raise SettingsError(f"{f.metadata['env']}: {problem}, got {value}")
