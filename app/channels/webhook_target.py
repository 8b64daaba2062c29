"""Where an ``api`` channel may send its webhooks (SPEC §6): the SSRF guard.

A team chooses the ``callback_url`` and the server POSTs to it. Without a guard any API key could
point it at the server's own neighbourhood (``127.0.0.1``, the database on ``10.x``, the cloud
metadata service on ``169.254.169.254``, a carrier-grade NAT ``100.64.x`` peer) and use the
delivery worker as a proxy into the private network, reading answers back through the delivery's
``last_error``. So a target must be ``https``, name a host, carry no credentials in the URL, and
every address its host resolves to must be a public (global) one. ``Settings.webhook_allow_private``
(``CHATBOTS_WEBHOOK_ALLOW_PRIVATE=true``) lifts the scheme and address rules for local development
and tests only.

The check runs twice, both times by resolving the name now:

* when the channel is created, so a wrong URL is refused to the person configuring it; and
* again before every send, because DNS can change: a name that resolved to a public address at
  creation can later be pointed at ``127.0.0.1`` (DNS rebinding), and a check done once would let
  every later delivery through to it.

What remains: the HTTP client resolves the name once more when it connects, so a name with a
very short TTL that flips between this check and the connect could still slip through. Closing
that completely means connecting to the address checked here (pinning it); redirects are never
followed by the sender, so a public target cannot bounce the request inward either.
"""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address
_RESOLVE_TIMEOUT_SECONDS = 10.0


class UnsafeWebhookTarget(ValueError):
    """The callback URL may not be sent to; the message says why (shown to the API caller and
    recorded as the delivery's error)."""


async def check_webhook_target(url: str, allow_private: bool) -> None:
    """Raise ``UnsafeWebhookTarget`` unless ``url`` may receive webhooks (module docstring).

    Resolves the host without blocking the event loop (the loop's ``getaddrinfo`` runs in a
    thread). Literal IP hosts go through the same resolution, which also turns the other spellings
    of an address (``2130706433``, ``0x7f.1``) into the address a connect would reach.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookTarget(f"callback_url is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_private):
        raise UnsafeWebhookTarget(
            f"callback_url must use https (got {scheme or 'no scheme'!r})"
            + ("" if scheme != "http" else "; plain http is allowed only with CHATBOTS_WEBHOOK_ALLOW_PRIVATE")
        )
    if "@" in parts.netloc:
        raise UnsafeWebhookTarget("callback_url must not contain credentials (user:password@)")
    host = parts.hostname
    if not host:
        raise UnsafeWebhookTarget("callback_url has no host")

    addresses = await _resolve(host, port or (443 if scheme == "https" else 80))
    if allow_private:
        return
    for address in addresses:
        why = _not_global(address)
        if why:
            raise UnsafeWebhookTarget(
                f"callback_url host {host!r} resolves to {address}, {why}: webhooks go only to "
                "public addresses"
            )


async def _resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT_SECONDS):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, TimeoutError) as exc:
        raise UnsafeWebhookTarget(f"callback_url host {host!r}: cannot resolve ({exc})") from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            addresses.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
        except ValueError:
            raise UnsafeWebhookTarget(f"callback_url host {host!r} resolves to {sockaddr[0]!r}") from None
    if not addresses:
        raise UnsafeWebhookTarget(f"callback_url host {host!r}: cannot resolve (no IP address)")
    return addresses


def _not_global(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            why = _not_global(embedded)
            if why:
                return f"which embeds {embedded}, {why}"
    checks = (
        ("is_loopback", "a loopback address"),
        ("is_unspecified", "the unspecified address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    )
    for attribute, why in checks:
        if getattr(address, attribute):
            return why
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED_ADDRESS_SPACE:
        return "a shared (carrier-grade NAT) address"
    if not address.is_global:
        return "not a global address"
    return None
