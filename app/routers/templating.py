"""Server-rendered pages (login, OAuth consent): one jinja2 environment over ``app/templates``,
autoescaped, and the headers every page carries (never framed, never cached)."""

from pathlib import Path

from fastapi.templating import Jinja2Templates

from app.security_headers import FRAME_DENIAL, PAGE_CSP

templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")

PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    **FRAME_DENIAL,
    "Cache-Control": "no-store",
}
