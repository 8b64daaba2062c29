"""The operator's domain functions, called by the ``chatbots`` CLI, the demo bootstrap and tests.

Each takes an ``AsyncSession`` (and ``Settings`` where secrets are encrypted), raises domain
errors (``BadRequest``, ``NotFound``) with messages meant for an operator, flushes and never
commits. This module gathers them from three: ``admin_identity`` (teams, users, API keys),
``admin_chatbots`` (LLM providers, chatbots, versions) and ``admin_channels``.
"""

from app.services.admin_channels import (
    ChannelSummary,
    create_channel,
    list_channels,
    rotate_widget_token,
    set_channel_enabled,
)
from app.services.admin_chatbots import (
    ChatbotSummary,
    ProviderSummary,
    archive_chatbot,
    create_chatbot,
    create_provider,
    get_chatbot_head,
    list_chatbots,
    list_providers,
    mask_config,
    publish_chatbot,
    update_chatbot,
)
from app.services.admin_identity import (
    ApiKeySummary,
    MemberAdded,
    create_api_key,
    create_team,
    create_user,
    find_user,
    get_team,
    get_user,
    list_api_keys,
    list_teams,
    normalize_email,
    parse_role,
    remove_member,
    revoke_api_key,
    set_password,
    set_user_active,
)

__all__ = [
    "ApiKeySummary", "ChannelSummary", "ChatbotSummary", "MemberAdded", "ProviderSummary",
    "archive_chatbot", "create_api_key", "create_channel", "create_chatbot", "create_provider",
    "create_team", "create_user", "find_user", "get_chatbot_head", "get_team", "get_user",
    "list_api_keys", "list_channels", "list_chatbots", "list_providers", "list_teams",
    "mask_config", "normalize_email", "parse_role", "publish_chatbot",
    "remove_member", "revoke_api_key", "rotate_widget_token", "set_channel_enabled", "set_password",
    "set_user_active",
    "update_chatbot",
]  # fmt: skip
