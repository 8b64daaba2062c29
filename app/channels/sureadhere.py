"""SureAdhere: an OAuth2 client-credentials token, then ``send-msg`` (SPEC §6).

The channel's ``auth_url`` issues the token (form POST ``grant_type=client_credentials`` with the
client's id and secret, and ``client_scope`` when the channel sets one); the message goes as JSON
``{"patient_Id", "message_Body"}`` with that token to ``/treatment/external/send-msg`` on the
channel's ``base_url`` host. ``tenant_id`` is not part of the send: it names the SureAdhere
tenant whose inbound webhooks reach this channel.

A token serves many sends, so the sender keeps it until shortly before its ``expires_in``: one
sender instance serves the whole worker, and a burst of deliveries shares one token request
instead of each asking the identity server. A 401 from ``send-msg`` means the token was revoked
or expired early: it is dropped and the delivery retried (transient), which fetches a new one.
"""

import asyncio
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from app.channels.base import (
    OutboundMessage,
    SendContext,
    SendFailed,
    SendResult,
    failure_from_response,
    post,
    required_config,
    response_json,
)

SEND_MSG_PATH = "/treatment/external/send-msg"
# A token without ``expires_in`` is kept this long: the 401 path covers one that dies sooner.
DEFAULT_TOKEN_SECONDS = 300.0
# Renew this long before the stated expiry (at most a tenth of the lifetime), so a token is never
# used in its last seconds, when it could expire between the check and the provider reading it.
EXPIRY_MARGIN_SECONDS = 60.0

# (auth_url, client_id, client_secret digest, scope). The secret's digest is part of the key so
# a channel that names another's client id without its secret cannot borrow its cached token.
TokenKey = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    renew_at: float  # on the sender's monotonic clock


class SureAdhereSender:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[TokenKey, _Token] = {}
        self._locks: dict[TokenKey, asyncio.Lock] = {}

    async def send(
        self, context: SendContext, message: OutboundMessage, config: dict[str, Any]
    ) -> SendResult:
        base_url = required_config(config, "base_url")
        key, form = _token_request(config)
        token = await self._token(context, key, form)
        response = await post(
            context,
            # Joined as OCS joins it: the path replaces any path in base_url, so a base_url
            # configured for Open Chat Studio reaches the same endpoint here.
            str(httpx.URL(base_url).join(SEND_MSG_PATH)),
            headers={"Authorization": f"Bearer {token}"},
            json={"patient_Id": message.recipient, "message_Body": message.text},
        )
        if response.status_code == 401:
            self._drop(key, token)
            raise SendFailed(
                f"401: token refused, a new one on retry: {response.text[:300]}", permanent=False
            )
        if not response.is_success:
            raise failure_from_response(response)
        return SendResult()  # send-msg returns no message id

    async def _token(self, context: SendContext, key: TokenKey, form: dict[str, str]) -> str:
        cached = self._tokens.get(key)
        if cached and self._clock() < cached.renew_at:
            return cached.value
        # One request per key at a time: concurrent sends wait for it and share its token.
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._tokens.get(key)
            if cached and self._clock() < cached.renew_at:
                return cached.value
            token = await self._fetch_token(context, key[0], form)
            self._tokens[key] = token
            return token.value

    async def _fetch_token(
        self, context: SendContext, auth_url: str, form: dict[str, str]
    ) -> _Token:
        requested_at = self._clock()
        response = await post(context, auth_url, data=form)
        body = response_json(response)
        if not response.is_success:
            raise failure_from_response(response, _token_error(response, body))
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            # A 200 without a token: auth_url is not a token endpoint (a login page, say).
            raise SendFailed(
                f"token endpoint answered {response.status_code} without an access_token",
                permanent=True,
            )
        seconds = _lifetime(body.get("expires_in"))
        margin = min(EXPIRY_MARGIN_SECONDS, seconds / 10)
        return _Token(value, renew_at=requested_at + seconds - margin)

    def _drop(self, key: TokenKey, token: str) -> None:
        # Only the token this send used: another send may already have fetched a fresh one.
        cached = self._tokens.get(key)
        if cached and cached.value == token:
            del self._tokens[key]


def _token_request(config: dict[str, Any]) -> tuple[TokenKey, dict[str, str]]:
    auth_url = required_config(config, "auth_url")
    client_id = required_config(config, "client_id")
    client_secret = required_config(config, "client_secret")
    scope = str(config.get("client_scope") or "")
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
    }
    if scope:
        form["scope"] = scope
    digest = hashlib.sha256(client_secret.encode()).hexdigest()
    return (auth_url, client_id, digest, scope), form


def _lifetime(expires_in: Any) -> float:
    # A number by RFC 6749, but some servers send it as a string.
    try:
        seconds = float(expires_in)
    except (TypeError, ValueError):
        return DEFAULT_TOKEN_SECONDS
    if isinstance(expires_in, bool) or not math.isfinite(seconds):
        return DEFAULT_TOKEN_SECONDS
    return seconds


def _token_error(response: httpx.Response, body: dict[str, Any]) -> str:
    """RFC 6749's ``error``/``error_description`` when the endpoint gives them, else its text."""
    error = body.get("error")
    if not error:
        return f"token endpoint {response.status_code}: {response.text[:500]}"
    description = body.get("error_description")
    detail = f"{error}: {description}" if description else str(error)
    return f"token endpoint {response.status_code}: {detail}"
