"""What an operator watches: Prometheus metrics (``metrics``; served by ``app.routers.metrics``)
and the log format (``logs``), both fed per request by ``requests.RequestIdMiddleware``."""
