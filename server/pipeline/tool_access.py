"""Honesty when the assistant cannot act.

With an LLM that cannot call tools (the embedded Gemma 270M, `supports_tools: false`) and no
intent classifier, no tool ever runs, yet a model asked to "set the volume to 30" happily says
"The volume is 30." Two guards: the system prompt says plainly that it cannot act (and the
device's capabilities are not listed, which read as an invitation to claim them), and a request
that is clearly a device action gets a fixed honest answer without asking the model at all (a
small model does not reliably follow the rule).
"""

from __future__ import annotations

import re
from typing import Any

NO_TOOLS_RULE = {
    "en": ("You cannot perform any action in this setup: you cannot change the volume or brightness, control "
           "lights or devices, set timers or alarms, play music or look anything up. If the user asks for an "
           "action, say honestly that you cannot do it here. Never claim that something was done."),
    "zh": ("在当前配置下你不能执行任何操作：不能调节音量或亮度，不能控制灯或其他设备，"
           "不能设置定时或闹钟，不能播放音乐，也不能查询信息。用户要求执行操作时，要如实说明你做不到，绝不能假装已经完成。"),
}

CANNOT_ACT = {
    "en": "Sorry, I can't do that here: in this setup I have no way to control the device or anything else. "
          "I can still answer questions.",
    "zh": "抱歉，这个我做不到：当前配置下我没有控制设备的能力，不过可以回答你的问题。",
}

_EN_LEAD = (r"^(?:(?:hey|hi|ok|okay|please|can you|could you|would you|will you|i want you to|"
            r"i'd like you to)[\s,]+)*")
_EN_VERB = (r"(?:set|turn|switch|change|raise|lower|increase|decrease|reduce|mute|unmute|play|pause|resume|"
            r"skip|open|close|dim|brighten|adjust|lock|unlock|start|stop|cancel|remind|take|call|send|"
            r"make it (?:louder|quieter|brighter|darker)|volume (?:up|down))\b")
_EN_OBJECT = (r"\b(?:volume|sound|louder|quieter|brightness|brighter|darker|light|lights|lamp|screen|display|music|"
              r"song|songs|track|playlist|radio|timer|alarm|reminder|remind|photo|picture|camera|door|lock|tv|fan|"
              r"heater|air ?conditioner|ac|thermostat|temperature|speaker|curtains?|blinds?|mute|unmute|"
              r"up|down|on|off)\b")
_EN_ACTION = re.compile(_EN_LEAD + _EN_VERB + r".*" + _EN_OBJECT, re.IGNORECASE)
_EN_SHORT = re.compile(_EN_LEAD + r"(?:volume (?:up|down)|louder|quieter|mute|unmute|lights? (?:on|off))\W*$",
                       re.IGNORECASE)
_ZH_OBJECT = (r"(?:音量|声音|亮度|屏幕|灯|空调|电视|风扇|窗帘|门锁|门|音乐|歌|闹钟|定时|计时|提醒|照片|拍照|相机|"
              r"摄像头|温度)")
_ZH_VERB = r"(?:调|设|设置|打开|开|关|关闭|关掉|播放|放|拍|静音|增大|减小|提高|降低|加大|升高|定|取消|暂停|停止)"
_ZH_ACTION = re.compile(
    rf"(?:把|将|帮我|给我|请)?.*(?:{_ZH_VERB}.{{0,8}}{_ZH_OBJECT}|{_ZH_OBJECT}.{{0,8}}{_ZH_VERB}|"
    r"大声一?点|小声一?点|声音大一?点|声音小一?点)")


def is_action_request(text: str) -> bool:
    """True when `text` asks the assistant to do something to the device or the house, rather
    than to answer ("What is the volume of a sphere?" is a question)."""
    t = text.strip()
    if not t:
        return False
    return bool(_EN_ACTION.search(t) or _EN_SHORT.search(t) or _ZH_ACTION.search(t))


def llm_can_call_tools(llm: Any) -> bool:
    return bool(getattr(llm, "supports_tools", False))


def can_act(llm: Any, mode: str, has_tools: bool) -> bool:
    """Whether a turn can run any tool: tools exist, and either the model calls them itself or
    an intent classifier picks them."""
    if mode == "nointent" or not has_tools:
        return False
    return mode == "intent_llm" or llm_can_call_tools(llm)


def no_tools_rule(language: str) -> str:
    return NO_TOOLS_RULE.get(language) or NO_TOOLS_RULE["en"]


def cannot_act_reply(language: str) -> str:
    return CANNOT_ACT.get(language) or CANNOT_ACT["en"]
