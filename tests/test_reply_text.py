"""What the assistant says: wake words are never questions, no internal marker is ever spoken,
the emotion follows the reply, and without tools it admits it cannot act (issue 7)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.config.schema import SessionConfig
from server.pipeline.dialogue import Dialogue
from server.pipeline.emotion import reply_emotion
from server.pipeline.responder import Responder, Sentence
from server.pipeline.splitter import SentenceSplitter, clean_for_speech
from server.pipeline.tool_access import can_act, cannot_act_reply, is_action_request
from server.pipeline.wake_words import WakeWords
from server.providers.base import ChatMessage, LLMDelta, LLMRequest

# ------------------------------------------------------------------ wake words

REFERENCE_DEFAULTS = ["你好小智", "嘿你好呀", "你好小志", "小爱同学", "你好小鑫", "你好小新", "小美同学", "小龙小龙",
                      "喵喵同学", "小滨小滨", "小冰小冰"]


def test_default_wake_words_include_the_reference_servers() -> None:
    words = WakeWords(SessionConfig().wake_words)
    for word in REFERENCE_DEFAULTS:
        assert words.is_wake_word(word), word
    # The browser page's exact text, with its comma.
    assert words.is_wake_word("嘿，你好呀")


def test_wake_word_alone_or_before_a_question() -> None:
    words = WakeWords(SessionConfig().wake_words)
    assert words.is_wake_word("你好小智。") and words.is_wake_word("Hey ESP!")
    assert words.is_wake_word("你好小智你好小智")
    assert not words.is_wake_word("你好") and not words.is_wake_word("") and not words.is_wake_word("jarvis, hi")
    assert words.strip_leading("嘿，你好呀") == ""
    assert words.strip_leading("你好小智，现在几点了？") == "现在几点了？"
    assert words.strip_leading("Alexa, what time is it?") == "what time is it?"
    assert words.strip_leading("What time is it?") == "What time is it?"
    assert words.strip_leading("你好，小智，在吗？") == "在吗？"  # punctuation inside the wake word
    assert words.strip_leading("小智你好，在吗") == "小智你好，在吗"  # not a wake word


# ------------------------------------------------------------------ markers

def split_all(parts: list[str]) -> list[str]:
    s = SentenceSplitter()
    out: list[str] = []
    for p in parts:
        out += s.feed(p)
    return out + s.flush()


def test_history_has_no_marker_a_model_could_copy() -> None:
    d = Dialogue()
    d.add("Tell me a story", "Once upon a time", interrupted=True)
    d.add("Set the volume to 30", "", interrupted=True)
    contents = [m.content for m in d.messages("sys", "hello")]
    assert contents[1:] == ["Tell me a story", "Once upon a time…", "Set the volume to 30", "…", "hello"]
    assert not any("[" in c or "interrupt" in c.lower() for c in contents)


@pytest.mark.parametrize(("stream", "spoken"), [
    # What py-xiaozhi heard, the model having copied the old marker.
    (["[interrupted by the user before answering] ", "The volume is 30."], ["The volume is 30."]),
    (["Sure", ", [", "interrupted by the user", "] here you go."], ["Sure, here you go."]),
    (["好的（笑），我来了。【系统提示：", "用户打断】再见！"], ["好的，", "我来了。", "再见！"]),
    (["I was saying [interrupted"], ["I was saying"]),
    (["[note] ", "[another]"], []),
    (["Pi is (about) 3.14. Done."], ["Pi is (about) 3.14.", "Done."]),  # ordinary brackets stay
])
def test_bracketed_meta_text_is_never_spoken(stream: list[str], spoken: list[str]) -> None:
    assert split_all(stream) == spoken


def test_a_stray_bracket_does_not_silence_the_rest() -> None:
    text = "Look at this [ " + "word " * 60 + ". And the end."
    out = split_all([text])
    assert out and "end" in out[-1]


def test_clean_for_speech_strips_tags() -> None:
    assert clean_for_speech("<break/>Hello [smiles] there (laughs)") == "Hello there"


# ------------------------------------------------------------------ emotion

@pytest.mark.parametrize(("reply", "emotion"), [
    ("Sorry, I can't do that here.", "sad"),
    ("Haha, that's a good one!", "laughing"),
    ("The capital of France is Paris.", "neutral"),
    ("Which city do you mean?", "thinking"),
    ("Wow, really? That is amazing.", "surprised"),
    ("Great, the timer is set.", "happy"),
    ("Good night, sleep well.", "sleepy"),
    ("抱歉，我做不到。", "sad"),
    ("哈哈，太好笑了", "laughing"),
    ("北京今天晴，最高二十度。", "neutral"),
    ("Here you go 😎", "cool"),  # the model's own emoji wins
])
def test_emotion_follows_the_reply(reply: str, emotion: str) -> None:
    assert reply_emotion(reply) == emotion


def test_emotion_varies_across_replies() -> None:
    replies = ["Sorry, I can't.", "Haha!", "Paris is the capital.", "What do you mean?", "Great news!"]
    assert len({reply_emotion(r) for r in replies}) == 5


# ------------------------------------------------------------------ honesty without tools

@pytest.mark.parametrize("text", ["Set the volume to 30", "set the volume to 30.", "Turn on the living room light",
                                  "Please play some music", "Can you turn it down?", "把音量调到30", "打开客厅的灯",
                                  "音量调大一点", "播放一首歌", "大声一点", "Start a timer for five minutes"])
def test_action_requests(text: str) -> None:
    assert is_action_request(text)


@pytest.mark.parametrize("text", ["What is the volume of a sphere?", "Tell me a joke", "What time is it?",
                                  "How do I turn off my computer?", "今天天气怎么样", "音乐是什么", ""])
def test_questions_are_not_action_requests(text: str) -> None:
    assert not is_action_request(text)


class ToollessLLM:
    """An LLM without tool calling that claims whatever it is asked (what Gemma 270M did)."""

    supports_tools = False

    def __init__(self) -> None:
        self.requests: list[LLMRequest] = []

    async def stream(self, request: LLMRequest) -> AsyncIterator[LLMDelta]:
        self.requests.append(request)
        yield LLMDelta(text="The volume is 30.")


class OneTool:
    name = "device"

    def __init__(self) -> None:
        self.calls = 0


async def collect(responder: Responder, text: str) -> list[str]:
    return [i.text async for i in responder.run([ChatMessage("system", "sys"), ChatMessage("user", text)])
            if isinstance(i, Sentence)]


async def test_no_tools_means_an_honest_answer_not_a_claim() -> None:
    llm = ToollessLLM()
    responder = Responder(llm, None, mode="function_call", language="en")
    assert not responder.can_act()
    said = await collect(responder, "Set the volume to 30")
    assert " ".join(said) == cannot_act_reply("en") and "30" not in " ".join(said)
    assert llm.requests == []  # the model was not asked to pretend
    # A question still goes to the model.
    assert await collect(responder, "What is the capital of France?") == ["The volume is 30."]
    zh = Responder(llm, None, mode="nointent", language="zh")
    assert await collect(zh, "把音量调到30") == [cannot_act_reply("zh")]


def test_can_act_rules() -> None:
    class Caller:
        supports_tools = True

    assert can_act(Caller(), "function_call", True)
    assert not can_act(Caller(), "function_call", False)
    assert not can_act(Caller(), "nointent", True)
    assert not can_act(ToollessLLM(), "function_call", True)
    assert can_act(ToollessLLM(), "intent_llm", True)  # the classifier picks tools for it
