"""`@tool`: an `async def` becomes a tool the LLM may call, described by its own signature.

The schema and the argument coercion come from signature.py; what the function returns is mapped
by results.py. Plugins reach all of this through server.plugin_api.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, overload

from server.tools.base import ToolContext, ToolResult, ToolSpec
from server.tools.results import to_tool_result
from server.tools.signature import ArgumentError, coerce_arguments, parse_docstring, read_signature

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# A description may be built from the plugin's validated Settings model (None without one).
Description = str | Callable[[Any], str]


class Tool:
    """A decorated plugin function: its schema, options and how to run it.

    Calling the object calls the original function (handy in tests); `invoke` is what the
    plugin loader uses: coerce arguments, call, map the result."""

    def __init__(self, fn: Callable[..., Awaitable[Any]], *, name: str | None, description: Description | None,
                 timeout: float, cancel_on_interruption: bool) -> None:
        if not inspect.iscoroutinefunction(fn):
            what = "an async generator" if inspect.isasyncgenfunction(fn) else "a plain (sync) function"
            raise TypeError(
                f"@tool {getattr(fn, '__qualname__', fn)!r} is {what}; tools must be `async def` returning a "
                "result: a sync function would block the event loop, and with it every session. Move "
                "blocking work into `await asyncio.to_thread(...)`.")
        self.fn = fn
        self.name = name or fn.__name__
        if not _TOOL_NAME.match(self.name):
            raise ValueError(f"@tool name {self.name!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"@tool {self.name}: timeout must be a positive number of seconds")
        self.timeout_s = float(timeout)
        self.cancel_on_interruption = bool(cancel_on_interruption)
        self.module = fn.__module__
        doc_description, doc_params = parse_docstring(fn.__doc__)
        self._description: Description = description if description is not None else doc_description
        if isinstance(self._description, str) and not self._description.strip():
            raise ValueError(f"@tool {self.name}: no description; write a docstring or pass description=")
        self.takes_context, self.params = read_signature(fn, self.name, doc_params)
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<tool {self.name} from {self.module}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.fn(*args, **kwargs)

    def description(self, settings: Any = None) -> str:
        if callable(self._description):
            return str(self._description(settings)).strip()
        return self._description.strip()

    def parameters_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object",
                                  "properties": {p.name: dict(p.schema) for p in self.params}}
        required = [p.name for p in self.params if p.required]
        if required:
            schema["required"] = required
        return schema

    def spec(self, settings: Any = None) -> ToolSpec:
        """A fresh ToolSpec (never shared: a description built from one config must not leak
        into another, the reference server's global-descriptor bug)."""
        return ToolSpec(name=self.name, description=self.description(settings),
                        parameters=self.parameters_schema(), timeout_s=self.timeout_s,
                        cancel_on_interruption=self.cancel_on_interruption)

    def coerce(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        return coerce_arguments(self.params, arguments)

    async def invoke(self, ctx: ToolContext, arguments: Mapping[str, Any]) -> ToolResult:
        """Run the tool for the model. Argument problems become an error result naming the
        parameters (the model retries); exceptions from the tool itself propagate to the
        caller, which knows the plugin's name for the log."""
        try:
            kwargs = self.coerce(arguments or {})
        except ArgumentError as exc:
            return ToolResult.error(f"{self.name}: {exc}; call it again with corrected arguments")
        if self.takes_context:
            value = await self.fn(ctx, **kwargs)
        else:
            value = await self.fn(**kwargs)
        return to_tool_result(value)


F = Callable[..., Awaitable[Any]]


@overload
def tool(fn: F, /) -> Tool: ...


@overload
def tool(fn: str | None = None, /, *, name: str | None = None, description: Description | None = None,
         timeout: float = 10, cancel_on_interruption: bool = True) -> Callable[[F], Tool]: ...


def tool(fn: F | str | None = None, /, *, name: str | None = None, description: Description | None = None,
         timeout: float = 10, cancel_on_interruption: bool = True) -> Tool | Callable[[F], Tool]:
    """Mark an `async def` as a tool the LLM may call.

    `@tool` or `@tool(name=..., description=..., timeout=10, cancel_on_interruption=True)`.
    `description` may be a function of the plugin's validated Settings model, for tools whose
    description lists configured things (Home Assistant entities). `timeout` bounds the call
    (the model gets an error result after it). `cancel_on_interruption=False` lets a call that
    changes the world (switching a light) finish when the user barges in."""
    if isinstance(fn, str):
        name, fn = fn, None

    def wrap(f: F) -> Tool:
        return Tool(f, name=name, description=description, timeout=timeout,
                    cancel_on_interruption=cancel_on_interruption)

    if fn is not None:
        return wrap(fn)
    return wrap
