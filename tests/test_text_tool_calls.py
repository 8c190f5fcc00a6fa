"""Tool calls written as text by local models (Qwen/Hermes <tool_call> format), split from the
speech as the text streams in, in whatever pieces the tokenizer produces."""

from __future__ import annotations

import json

import pytest

from server.providers.base import ChatMessage
from server.providers.llm.llama_cpp import ChatTemplate, template_messages
from server.providers.llm.text_tool_calls import ToolCallText, parse_call

TOOLS = {"self_audio_speaker_set_volume", "get_time"}


def run(pieces: list[str], tools: set[str] = TOOLS) -> tuple[str, list[tuple[str, dict]]]:
    parser = ToolCallText(tools)
    text, calls = "", []
    for piece in pieces:
        t, c = parser.feed(piece)
        text += t
        calls += c
    t, c = parser.finish()
    return text + t, [(x.name, json.loads(x.arguments)) for x in calls + c]


def chop(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


CALL = '<tool_call>\n{"name": "self_audio_speaker_set_volume", "arguments": {"volume": 30}}\n</tool_call>'


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_call_after_speech_in_any_chunking(size: int) -> None:
    text, calls = run(chop("好的，我来调一下。" + CALL, size))
    assert text == "好的，我来调一下。"
    assert calls == [("self_audio_speaker_set_volume", {"volume": 30})]


def test_speech_streams_before_the_call_ends() -> None:
    parser = ToolCallText(TOOLS)
    assert parser.feed("OK, setting it now. <tool") == ("OK, setting it now. ", [])
    assert parser.feed('_call>{"name": "get_time", ') == ("", [])
    text, calls = parser.feed('"arguments": {}}</tool_call>')
    assert text == "" and [c.name for c in calls] == ["get_time"]


def test_a_lone_angle_bracket_is_not_held_forever() -> None:
    text, calls = run(["1 <", " 2 is true"])
    assert text == "1 < 2 is true" and calls == []


def test_two_calls_and_an_unclosed_one_at_the_end() -> None:
    body = CALL + "\n<tool_call>\n" + '{"name": "get_time", "arguments": {}}'
    text, calls = run(chop(body, 5))
    assert [name for name, _ in calls] == ["self_audio_speaker_set_volume", "get_time"]
    assert text.strip() == ""


def test_bare_json_and_fenced_json_calls() -> None:
    bare = '{"name": "self_audio_speaker_set_volume", "arguments": {"volume": 30}}'
    assert run(chop(bare, 4))[1] == [("self_audio_speaker_set_volume", {"volume": 30})]
    fenced = "```json\n" + bare + "\n```"
    assert run(chop(fenced, 3))[1] == [("self_audio_speaker_set_volume", {"volume": 30})]


def test_json_that_names_no_offered_tool_is_spoken_as_written() -> None:
    text, calls = run(['{"answer": 42}'])
    assert calls == [] and text == '{"answer": 42}'
    text, calls = run(['{"name": "rm_rf", "arguments": {}}'])
    assert calls == [] and "rm_rf" in text


def test_without_offered_tools_braces_are_plain_text() -> None:
    parser = ToolCallText(set())
    assert parser.feed("{curly} words") == ("{curly} words", [])


def test_bad_json_inside_tags_is_dropped_not_spoken() -> None:
    text, calls = run(["Sure.<tool_call>{not json</tool_call> Done."])
    assert calls == [] and text == "Sure. Done."


def test_parse_call_variants() -> None:
    assert parse_call('{"name": "get_time", "parameters": {"tz": "UTC"}}').arguments == '{"tz": "UTC"}'
    assert parse_call('{"function": {"name": "get_time", "arguments": "{}"}}').arguments == "{}"
    assert parse_call('call this: {"name": "get_time", "arguments": {}} thanks').name == "get_time"
    assert parse_call("[1, 2]") is None
    assert parse_call('{"name": "x"}', {"y"}) is None


QWEN_STYLE = """{%- if tools %}<|im_start|>system
{{ messages[0]['content'] }}
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools><|im_end|>
{% endif %}{% for message in messages %}{% if message.role == "assistant" and message.tool_calls %}
<|im_start|>assistant{% for c in message.tool_calls %}
<tool_call>{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>{{ message.content }}</tool_response><|im_end|>
{% elif not (loop.first and tools) %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_template_renders_tools_unescaped_and_arguments_once() -> None:
    template = ChatTemplate(QWEN_STYLE, eos="<|im_end|>")
    tool = {"type": "function", "function": {"name": "get_time", "description": "现在几点", "parameters": {}}}
    messages = template_messages([
        ChatMessage("system", "你是小智。"),
        ChatMessage("user", "几点了？"),
        ChatMessage("assistant", "", tool_calls=[{"id": "call_1", "type": "function",
                                                  "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}}]),
        ChatMessage("tool", "12:00", tool_call_id="call_1", name="get_time"),
    ])
    prompt = template.render(messages, [tool])
    assert template.renders_tools
    assert "现在几点" in prompt and "\\u" not in prompt  # Chinese kept as characters
    assert '"arguments": {"tz": "UTC"}' in prompt  # an object, not a JSON string in a string
    assert "<tool_response>12:00</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_template_errors_are_reported() -> None:
    template = ChatTemplate("{{ raise_exception('only user and assistant roles') }}")
    with pytest.raises(ValueError, match="only user and assistant"):
        template.render([{"role": "user", "content": "hi"}])
