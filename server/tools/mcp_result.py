"""An MCP `tools/call` result as the ToolResult the model reads: one conversion for the device's
own MCP tools (JSON-RPC over the xiaozhi WebSocket) and for external MCP servers (the SDK).

Text parts are joined; parts the model cannot read (images, audio) are named, not dropped, so it
can tell the user what happened; `structuredContent` stands in when there is no content; an
`isError` result becomes an error result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from server.tools.base import ToolResult

# A source's own reading of a text part: (text for the model, whether it reports a failure).
TextReader = Callable[[str], tuple[str, bool]]


def wire_form(result: Any) -> Any:
    """The JSON form of a result: an SDK model is dumped with the wire's field names
    (`isError`, `structuredContent`, `mimeType`), anything else is returned as it is."""
    dump = getattr(result, "model_dump", None)
    if callable(dump):
        return dump(by_alias=True, mode="json", exclude_none=True)
    return result


def _part_text(item: dict[str, Any]) -> str | None:
    kind = item.get("type")
    if kind == "image":
        mime = item.get("mimeType")
        return f"[image {mime} omitted]" if isinstance(mime, str) and mime else "[image omitted]"
    if kind == "audio":
        return "[audio omitted]"
    if kind == "resource":
        resource = item.get("resource")
        resource = resource if isinstance(resource, dict) else {}
        text = resource.get("text")
        return text if isinstance(text, str) else f"[resource {resource.get('uri', '')}]"
    if kind == "resource_link":
        return f"[link {item.get('uri', '')}]"
    return None


def mcp_tool_result(result: Any, *, read_text: TextReader | None = None,
                    failed: str = "the tool failed") -> ToolResult:
    """`result` (a wire dict or an SDK CallToolResult) as a ToolResult. `read_text` lets a source
    interpret its text parts; `failed` is the error text when an `isError` result says nothing."""
    result = wire_form(result)
    if not isinstance(result, dict):
        return ToolResult(text=json.dumps(result, ensure_ascii=False))
    parts: list[str] = []
    is_error = result.get("isError") is True
    content = result.get("content")
    for item in content if isinstance(content, list) else []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "text" and isinstance(item.get("text"), str):
            text, part_failed = read_text(item["text"]) if read_text else (item["text"], False)
            parts.append(text)
            is_error = is_error or part_failed
        elif (text := _part_text(item)) is not None:
            parts.append(text)
    structured = result.get("structuredContent")
    if not parts and structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False))
    # Not MCP-shaped at all (some boards answer with a bare object): the model reads it as JSON.
    text = "\n".join(parts) if parts or isinstance(content, list) else json.dumps(result, ensure_ascii=False)
    if is_error:
        return ToolResult.error(text or failed)
    return ToolResult(text=text)
