"""Liveness and readiness probes."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """The database is reachable and its schema is at the latest migration."""
    from app.migrate import is_at_head  # alembic is heavy to import: not at start-up

    try:
        ready = await is_at_head(request.app.state.engine)
    except Exception as exc:  # any failure to reach the database means "not ready"
        return JSONResponse({"status": "unavailable", "reason": type(exc).__name__}, 503)
    if not ready:
        return JSONResponse({"status": "unavailable", "reason": "migrations pending"}, 503)
    return JSONResponse({"status": "ok"})
