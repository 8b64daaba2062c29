"""All models, imported here so that ``Base.metadata`` knows every table."""

from app.models.auth import OAuthAuthorizationCode, OAuthClient, OAuthToken, WebSession
from app.models.base import Base
from app.models.chatbot import Channel, Chatbot, HistoryMode, LlmProvider, Platform
from app.models.conversation import (
    ChatMessage,
    ChatSession,
    IdempotencyRecord,
    MessageRole,
    Participant,
    ParticipantData,
    SessionStatus,
    SessionWaiter,
)
from app.models.delivery import Delivery, DeliveryStatus
from app.models.team import ApiKey, Membership, Role, Team, User

__all__ = [
    "ApiKey", "Base", "Channel", "ChatMessage", "ChatSession", "Chatbot", "Delivery", "DeliveryStatus",
    "HistoryMode", "IdempotencyRecord", "LlmProvider", "Membership", "MessageRole",
    "OAuthAuthorizationCode", "OAuthClient", "OAuthToken", "WebSession",
    "Participant", "ParticipantData", "Platform", "Role", "SessionStatus", "SessionWaiter",
    "Team", "User",
]  # fmt: skip
