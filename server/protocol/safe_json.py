"""json.loads for text from the network: bounded nesting, and never an exception other than
ProtocolError (CPython's parser raises RecursionError past ~1000 levels, which used to escape
every handler)."""

from __future__ import annotations

import json
from typing import Any

from server.protocol.errors import ProtocolError

MAX_DEPTH = 32


def depth_exceeds(value: Any, limit: int) -> bool:
    """True when `value` nests deeper than `limit` containers (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def loads_limited(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise ProtocolError("JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if depth_exceeds(value, max_depth):
        raise ProtocolError(f"JSON nested deeper than {max_depth} levels")
    return value
