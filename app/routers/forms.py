"""HTML form posts of the server-rendered pages (``application/x-www-form-urlencoded``, what a
``<form method="post">`` sends): read with a small size bound and a time bound, like the JSON
bodies, rather than by an unbounded form parser."""

from urllib.parse import parse_qsl

from fastapi import Request

from app.config import Settings
from app.routers.body import UnsupportedMediaType, read_body

FORM_MAX_BYTES = 64 * 1024  # a login or consent form is a few hundred bytes
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


async def read_form(request: Request, settings: Settings) -> dict[str, str]:
    """The posted fields ({} for no body: a script may send its CSRF token as a header
    instead); a field sent twice keeps its first value."""
    limit = min(FORM_MAX_BYTES, settings.max_body_bytes)
    raw = await read_body(request, limit, settings.body_timeout_seconds)
    if not raw.strip():
        return {}
    mime = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if mime != FORM_CONTENT_TYPE:
        raise UnsupportedMediaType(f'Unsupported media type "{mime or "none"}" in request.')
    fields: dict[str, str] = {}
    for name, value in parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields
