"""Which web pages may use a widget's embed key: its channel's ``allowed_domains`` (SPEC §4.6).

An entry is one of:

- ``app.example.com``: exactly that host;
- ``*.example.com``: any sub-domain of example.com, at any depth, but NOT example.com itself
  (list both to allow both);
- ``*``: any host;
- any of these with a port (``localhost:3000``, ``*.example.com:8443``), or written as an origin
  with its scheme (``https://app.example.com``), as people copy it from the address bar.

Decisions, as a browser's origin is compared (RFC 6454: scheme, host, port):

- The scheme must be ``http`` or ``https``. An entry without a scheme admits both (a widget
  is developed on ``http://localhost`` and served on https); one with a scheme admits only it.
  ``null`` (sandboxed frames, ``file:`` pages) and every other scheme never pass.
- The port matters: an entry without a port admits only the scheme's default port (80, 443);
  ``example.com:8443`` admits only 8443; ``*`` admits any port.
- Hosts are compared case-insensitively, without a trailing dot, and must be plain DNS names or
  IP addresses: anything else (user info, backslashes, spaces) is refused rather than guessed at.
  A look-alike host (``app.example.com.evil.example``) is another host and does not pass.

The page's origin is the ``Origin`` header; without one, the ``Referer`` URL's (a same-origin
``GET``-style request from an older browser may send only that). Neither → not allowed.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

WEB_SCHEMES = {"http": 80, "https": 443}
ANY = "*"
# A DNS name (labels of letters, digits, hyphens), an IPv4 address, or a bracketed IPv6 one.
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?|\[[0-9a-f:.]+\]")


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int


def parse_origin(url: str | None) -> Origin | None:
    """The web origin of an ``Origin`` header or a ``Referer`` URL; None if it has none."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    scheme = parts.scheme.lower()
    if scheme not in WEB_SCHEMES or parts.username is not None or parts.password is not None:
        return None
    host = _clean_host(parts.hostname)
    if host is None:
        return None
    return Origin(scheme, host, port if port is not None else WEB_SCHEMES[scheme])


def request_origin(headers: Mapping[str, str]) -> Origin | None:
    """The calling page's origin: ``Origin``, else ``Referer``. A present but unusable
    ``Origin`` (``null``) is not replaced by the ``Referer``: the browser chose to hide it."""
    origin = headers.get("origin")
    if origin is not None:
        return parse_origin(origin)
    return parse_origin(headers.get("referer"))


def origin_allowed(origin: Origin | None, allowed_domains: Iterable[str] | str | None) -> bool:
    if origin is None:
        return False
    return any(_entry_admits(entry, origin) for entry in domain_entries(allowed_domains))


def domain_entries(allowed_domains: Iterable[str] | str | None) -> list[str]:
    """The entries of a channel's ``allowed_domains`` (a list, or one comma-separated string)."""
    if not allowed_domains:
        return []
    if isinstance(allowed_domains, str):
        allowed_domains = allowed_domains.split(",")
    return [e.strip().lower() for e in allowed_domains if isinstance(e, str) and e.strip()]


def _entry_admits(entry: str, origin: Origin) -> bool:
    if entry == ANY:
        return True
    scheme: str | None = None
    if "://" in entry:
        scheme, _, entry = entry.partition("://")
        if scheme not in WEB_SCHEMES or scheme != origin.scheme:
            return False
    entry = entry.rstrip("/")
    wildcard = entry.startswith("*.")
    if wildcard:
        entry = entry[2:]
    host, port = _split_port(entry)
    host = _clean_host(host)
    if host is None or port == -1:
        return False
    if origin.port != (port if port is not None else WEB_SCHEMES[origin.scheme]):
        return False
    if wildcard:
        return origin.host.endswith("." + host)
    return origin.host == host


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host[:port]`` → (host, port or None); port -1 when it is not a valid port."""
    if entry.startswith("["):  # [v6]:port
        host, _, rest = entry.partition("]")
        host += "]"
        if not rest:
            return host, None
        entry_port = rest[1:] if rest.startswith(":") else "x"
    elif ":" in entry:
        host, _, entry_port = entry.rpartition(":")
    else:
        return entry, None
    if not entry_port.isdigit() or not 0 < int(entry_port) < 65536:
        return host, -1
    return host, int(entry_port)


def _clean_host(host: str | None) -> str | None:
    if not host:
        return None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if ":" in host and not host.startswith("["):  # urlsplit gives IPv6 hosts without brackets
        host = f"[{host}]"
    return host if _HOST.fullmatch(host) else None
