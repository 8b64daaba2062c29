"""What a channel's config must hold to send on its platform (SPEC §6), checked at creation so
a missing key is a clear error then, not a failed delivery later."""

from collections.abc import Mapping
from typing import Any

from app.models import Platform

# Platform → keys every channel of it needs. WhatsApp depends on its provider (below).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    Platform.telegram: ("bot_token",),
    Platform.facebook: ("page_id", "account_sid", "auth_token"),
    Platform.sureadhere: ("client_id", "client_secret", "auth_url", "base_url", "tenant_id"),
    Platform.slack: ("bot_token",),
    # The name Connect shows the participant for this bot's channel (Connect's channel_name when
    # the participant's Connect channel is created); sending itself needs only server settings.
    Platform.commcare_connect: ("commcare_connect_bot_name",),
    Platform.email: ("from_address",),
    Platform.api: ("callback_url",),
}
WHATSAPP_PROVIDERS: dict[str, tuple[str, ...]] = {
    "meta_cloud_api": ("phone_number_id", "access_token", "template_name", "template_language"),
    "twilio": ("account_sid", "auth_token", "number"),
    "turnio": ("auth_token",),
}


class InvalidChannelConfig(ValueError):
    pass


def check_channel_config(platform: str, config: Mapping[str, Any]) -> None:
    """Raise ``InvalidChannelConfig`` naming what is missing (or the WhatsApp provider's choices)."""
    required = REQUIRED_KEYS.get(platform, ())
    if platform == Platform.whatsapp:
        provider = config.get("provider")
        if provider not in WHATSAPP_PROVIDERS:
            choices = ", ".join(WHATSAPP_PROVIDERS)
            raise InvalidChannelConfig(f"A whatsapp channel needs provider=<{choices}>.")
        required = WHATSAPP_PROVIDERS[provider]
    missing = [key for key in required if not str(config.get(key) or "").strip()]
    if missing:
        keys = " ".join(f"--config {key}=..." for key in missing)
        raise InvalidChannelConfig(f"A {platform} channel needs {', '.join(missing)}: {keys}")
