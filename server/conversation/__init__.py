"""The transport-free conversation core: `Conversation` (one user's dialogue, memory, persona,
tools and turns) and `ConversationHost` (what an endpoint implements to carry it)."""

from server.conversation.conversation import Conversation, normalize
from server.conversation.host import ConversationHost, DeviceToolSource
from server.conversation.metrics import MetricsLog, TurnMetrics
from server.conversation.turn import Turn, TurnKind, TurnOutcome

__all__ = ["Conversation", "ConversationHost", "DeviceToolSource", "MetricsLog", "Turn", "TurnKind",
           "TurnMetrics", "TurnOutcome", "normalize"]
