"""Config problems as one line a user can act on: the key's dotted path, what is wrong, and the
value that was given. Used for config.yaml and for each plugin's settings alike."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class ConfigError(Exception):
    """A config problem, as one line a user can act on."""


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def one_line(err: ValidationError, prefix: str = "") -> str:
    """The first problem of a pydantic ValidationError, named by its config key under `prefix`,
    and how many more there are."""
    problems = err.errors(include_url=False)
    if not problems:
        return f"{prefix or 'config'}: invalid"
    first = problems[0]
    where = _loc(tuple(first["loc"]))
    if prefix:
        where = f"{prefix}.{where}" if where else prefix
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing",):
        shown = repr(first["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg = f"{msg} (got {shown})"
    more = len(problems) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}: {msg}{suffix}"
