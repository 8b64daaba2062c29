"""``HEAD`` wherever ``GET`` answers (RFC 9110 §9.3.2): health checkers and link checkers use
it, and FastAPI's routes answer it 405. Rather than a second route per ``GET``, the request
runs as its ``GET`` and the body is dropped on the way out: the status and headers (the
``Content-Length`` included) are exactly the ``GET``'s. A path with no ``GET`` answers 405 with
its ``Allow``, as any other method would.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)
