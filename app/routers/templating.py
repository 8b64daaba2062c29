"""Server-rendered pages (login, OAuth consent): one jinja2 environment over ``app/templates``,
autoescaped, and the headers every page carries (never framed, never cached)."""

from pathlib import Path

from fastapi.templating import Jinja2Templates

templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")

PAGE_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
