"""A tool's parameters read from its Python signature and docstring: the JSON Schema the model
sees, and the checking and coercion of the model's arguments against the same description.

Pure: no I/O, no plugin or session knowledge. The `@tool` decorator (decorator.py) uses it; the
plugin API re-exports `ArgumentError` and `coerce_arguments`.
"""

from __future__ import annotations

import enum
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from server.tools.base import ToolContext

# --------------------------------------------------------------------------------------------
# Types: one small description per parameter, used both for the schema and for coercion


@dataclass(slots=True, frozen=True)
class _Type:
    kind: Literal["str", "int", "float", "bool", "enum", "list", "object", "any"]
    choices: tuple[Any, ...] = ()  # enum: allowed values (JSON values)
    enum_cls: type[enum.Enum] | None = None  # enum from an Enum class: convert back to members
    item: _Type | None = None  # list: item type
    nullable: bool = False


def _json_type_of(values: Sequence[Any]) -> str | None:
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        return "boolean"
    if kinds == {str}:
        return "string"
    if kinds <= {int} and kinds:
        return "integer"
    if kinds <= {int, float} and kinds:
        return "number"
    return None


def _describe(annotation: Any, where: str) -> tuple[_Type, dict[str, Any], list[str]]:
    """(type, JSON Schema, descriptions from Annotated) of one annotation."""
    notes: list[str] = []
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = get_args(annotation)
        notes = [m.strip() for m in meta if isinstance(m, str) and m.strip()]
        t, schema, inner = _describe(base, where)
        return t, schema, inner + notes
    if origin in (typing.Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"{where}: unions of several types are not supported ({annotation!r}); "
                            "use one type, optionally `| None`")
        t, schema, inner = _describe(members[0], where)
        # The schema stays the plain type: several OpenAI-compatible backends reject
        # `"type": [..., "null"]`; leaving the parameter out means "not given" anyway.
        return _Type(t.kind, t.choices, t.enum_cls, t.item, nullable=True), schema, inner
    if origin is Literal:
        values = get_args(annotation)
        if not values or not all(isinstance(v, str | int | float | bool) for v in values):
            raise TypeError(f"{where}: Literal values must be strings, numbers or booleans")
        schema: dict[str, Any] = {"enum": list(values)}
        if (jt := _json_type_of(values)) is not None:
            schema = {"type": jt, "enum": list(values)}
        return _Type("enum", choices=tuple(values)), schema, notes
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = tuple(m.value for m in annotation)
        if not all(isinstance(v, str | int | float) for v in values):
            raise TypeError(f"{where}: Enum {annotation.__name__} must have str or number values")
        schema = {"enum": list(values)}
        if (jt := _json_type_of(values)) is not None:
            schema = {"type": jt, "enum": list(values)}
        return _Type("enum", choices=values, enum_cls=annotation), schema, notes
    if annotation in (list, tuple, Sequence) or origin in (list, tuple, Sequence):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        if origin is tuple and len(args) > 1 and len(set(args)) > 1:
            raise TypeError(f"{where}: fixed-shape tuples are not supported; use list[X]")
        if not args:
            return _Type("list", item=_Type("any")), {"type": "array"}, notes
        item_t, item_schema, _ = _describe(args[0], where + "[]")
        if item_t.kind in ("list", "object"):
            raise TypeError(f"{where}: lists of lists or objects are not supported")
        return _Type("list", item=item_t), {"type": "array", "items": item_schema}, notes
    if annotation is dict or origin is dict or annotation is Mapping or origin is Mapping:
        return _Type("object"), {"type": "object"}, notes
    if annotation is Any:
        return _Type("any"), {}, notes
    simple = {str: ("str", "string"), bool: ("bool", "boolean"), int: ("int", "integer"),
              float: ("float", "number")}
    if annotation in simple:
        kind, json_type = simple[annotation]
        return _Type(kind), {"type": json_type}, notes  # type: ignore[arg-type]
    raise TypeError(f"{where}: unsupported type {annotation!r}; use str, int, float, bool, "
                    "Literal[...], an Enum, list[...], dict, or X | None")


# --------------------------------------------------------------------------------------------
# Docstrings (Google style)

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Examples?|Notes?|"
                      r"Warnings?|See Also|Todo|Attributes)\s*:\s*$", re.IGNORECASE)
_ARG_LINE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _join(lines: Sequence[str]) -> str:
    """Join wrapped lines; no space between two CJK characters (Chinese has none)."""
    out = ""
    for line in (s.strip() for s in lines):
        if not line:
            continue
        if out and not (_is_cjk(out[-1]) and _is_cjk(line[0])):
            out += " "
        out += line
    return out


def _is_cjk(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\u3000" <= ch <= "\u303f" \
        or "\uff00" <= ch <= "\uffef"


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style docstring.

    The description is the first paragraph: what the model reads to decide *whether* to call,
    so it is kept short and later paragraphs can hold notes for developers."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        first.append(line)
    params: dict[str, str] = {}
    i = 0
    while i < len(lines):
        header = lines[i]
        if _SECTION.match(header.strip()) and header.strip().split(":")[0].lower() in (
                "args", "arguments", "parameters", "params"):
            base_indent = len(header) - len(header.lstrip())
            current: str | None = None
            entry_indent = None
            i += 1
            while i < len(lines):
                line = lines[i]
                if not line.strip():
                    i += 1
                    continue
                indent = len(line) - len(line.lstrip())
                if indent <= base_indent:
                    break  # the next section
                m = _ARG_LINE.match(line.strip())
                if m and (entry_indent is None or indent <= entry_indent):
                    entry_indent = indent
                    current = m.group(1)
                    params[current] = m.group(2).strip()
                elif current is not None:
                    params[current] = _join([params[current], line])
                i += 1
            continue
        i += 1
    return _join(first), params


# --------------------------------------------------------------------------------------------
# Arguments


@dataclass(slots=True, frozen=True)
class Param:
    name: str
    type: _Type
    schema: dict[str, Any]
    required: bool
    default: Any = None


class ArgumentError(ValueError):
    """The model's arguments do not fit the signature; `problems` names each parameter."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


_TRUE = {"true", "yes", "y", "on", "1", "是", "对", "开", "打开"}
_FALSE = {"false", "no", "n", "off", "0", "否", "不", "关", "关闭"}


def _coerce(value: Any, t: _Type) -> Any:
    """One value converted to `t`, or ValueError with a short reason. Models often send numbers
    as strings ("3"), booleans as words, and a single item where a list is expected."""
    if value is None:
        if t.nullable or t.kind == "any":
            return None
        raise ValueError("must not be null")
    kind = t.kind
    if kind == "any":
        return value
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float):
            return json.dumps(value) if isinstance(value, bool) else str(value)
        raise ValueError(f"expected a string, got {type(value).__name__}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            s = value.strip()
            try:
                return int(s)
            except ValueError:
                try:
                    f = float(s)
                except ValueError:
                    pass
                else:
                    if f.is_integer():
                        return int(f)
        raise ValueError(f"expected an integer, got {value!r}")
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                f = float(value.strip())
            except ValueError:
                pass
            else:
                if math.isfinite(f):
                    return f
        raise ValueError(f"expected a number, got {value!r}")
    if kind == "enum":
        found = _match_choice(value, t.choices)
        if found is _NOTHING:
            allowed = ", ".join(json.dumps(c, ensure_ascii=False) for c in t.choices)
            raise ValueError(f"must be one of {allowed}, got {json.dumps(value, ensure_ascii=False)}")
        return t.enum_cls(found) if t.enum_cls is not None else found
    if kind == "list":
        assert t.item is not None
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError as exc:
                    raise ValueError(f"expected a list, got unparseable text {value!r}") from exc
        if not isinstance(value, list | tuple):
            value = [value]  # a single item where a list was expected
        out = []
        for n, item in enumerate(value):
            try:
                out.append(_coerce(item, t.item))
            except ValueError as exc:
                raise ValueError(f"item {n}: {exc}") from None
        return out
    if kind == "object":
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if isinstance(value, dict):
            return value
        raise ValueError(f"expected an object, got {type(value).__name__}")
    raise AssertionError(kind)


_NOTHING = object()


def _match_choice(value: Any, choices: tuple[Any, ...]) -> Any:
    for c in choices:
        if value == c and type(value) is type(c):
            return c
    # "3" for 3, "ON" for "on": the model's spelling, not a different value
    text = str(value).strip().lower() if not isinstance(value, bool) else json.dumps(value)
    for c in choices:
        ctext = json.dumps(c) if isinstance(c, bool) else str(c).lower()
        if text == ctext:
            return c
    return _NOTHING


def coerce_arguments(params: Sequence[Param], arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Check and convert the model's JSON arguments against a tool's parameters.

    Unknown keys are dropped (models invent extras), values are converted where the intent is
    clear ("3" -> 3), a `null` for an optional parameter means "use the default". Every problem
    is collected, so one error result tells the model all it must fix. Pure: no I/O."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for p in params:
        present = p.name in arguments
        value = arguments.get(p.name)
        if not present or (value is None and not p.type.nullable):
            if p.required:
                hint = p.schema.get("description", "")
                problems.append(f"missing required parameter '{p.name}'" + (f" ({hint})" if hint else ""))
            continue
        try:
            out[p.name] = _coerce(value, p.type)
        except ValueError as exc:
            problems.append(f"parameter '{p.name}': {exc}")
    if problems:
        raise ArgumentError(problems)
    return out


# --------------------------------------------------------------------------------------------
# Signatures


def read_signature(fn: Callable[..., Any], tool_name: str,
                    doc_params: dict[str, str]) -> tuple[bool, tuple[Param, ...]]:
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # noqa: BLE001 - a forward reference that does not resolve
        raise TypeError(f"@tool {tool_name}: cannot resolve the type hints: {exc}") from exc
    params = list(sig.parameters.values())
    takes_context = False
    if params and (params[0].name in ("ctx", "context") or hints.get(params[0].name) is ToolContext):
        takes_context = True
        params = params[1:]
    out: list[Param] = []
    for p in params:
        where = f"@tool {tool_name}, parameter '{p.name}'"
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{where}: *args/**kwargs cannot be described to the model; name each parameter")
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"{where}: positional-only parameters cannot be passed by name")
        if p.name not in hints:
            raise TypeError(f"{where}: needs a type hint (the model is told the type)")
        t, schema, notes = _describe(hints[p.name], where)
        text = notes[0] if notes else doc_params.get(p.name, "")
        schema = dict(schema)
        if text:
            schema["description"] = text
        required = p.default is inspect.Parameter.empty
        default = None if required else p.default
        if not required and default is not None:
            if isinstance(default, enum.Enum):
                default = default.value
            if isinstance(default, str | int | float | bool):
                schema["default"] = default
        out.append(Param(p.name, t, schema, required, None if required else p.default))
    unknown = set(doc_params) - {p.name for p in params} - {"ctx", "context"}
    if unknown:
        raise TypeError(f"@tool {tool_name}: the docstring documents parameters that do not exist: "
                        f"{', '.join(sorted(unknown))}")
    return takes_context, tuple(out)
