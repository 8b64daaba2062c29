"""Settings, read once from ``CHATBOTS_*`` environment variables (and a ``.env`` file).

Nothing else in the code reads ``os.environ``; everything configurable is a field here.
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from limits import parse
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./chatbots.db"
# Used only by the embedded default (SQLite file, no SECRET_KEY given). Anywhere else a real key
# is required: see ``Settings.require_secret_key``.
EMBEDDED_SECRET_KEY = "embedded-default-not-secret-change-me"

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    # Settings hold secrets (keys, passwords in URLs): a rejected value is named, never echoed.
    model_config = SettingsConfigDict(
        env_prefix="CHATBOTS_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = DEFAULT_DATABASE_URL
    secret_key: str = ""
    # Older secret keys, still read but never written with (app.crypto): a comma-separated list,
    # or a JSON list of strings (for a key with a comma in it). See README "Key rotation".
    secret_key_fallbacks: Annotated[tuple[str, ...], NoDecode] = ()
    # Connections per pool per worker (PostgreSQL: the hot path's driver pool and SQLAlchemy's
    # pool each; SQLite: SQLAlchemy's). Small on purpose: connections are held only for the
    # short transactions of a turn, never across the LLM call, and one worker's event loop
    # cannot keep more busy. Turns beyond it wait their turn for a connection in arrival order,
    # which finishes a burst's early turns first instead of all of them late (bench/RESULTS.md).
    database_pool_size: int = 5
    database_max_overflow: int = 0

    # Request limits (SPEC §3.1).
    max_body_bytes: int = 1024 * 1024
    max_message_chars: int = 32_000
    # Bound on reading a whole request body. The server (uvicorn) has none: a client that sends
    # its headers and then stalls mid-body (a dead mobile link, or on purpose) would hold its
    # request, and what the request holds by then (the credential check's database session),
    # for ever. 30 s lets 1 MiB through at ~35 KB/s.
    body_timeout_seconds: float = 30.0
    # What one connection may cost `chatbots serve` (app.connection_limits): a request head
    # (request line and headers) over ``max_header_bytes`` is a 431; a head not complete within
    # ``header_timeout_seconds`` of its first byte (of the connection, for its first request) a
    # 408; an idle keep-alive connection is closed after ``keep_alive_seconds`` (keep it longer
    # than a reverse proxy's upstream idle timeout); past ``max_connections`` open connections
    # or requests in flight per worker process, 503 with Retry-After.
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    keep_alive_seconds: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)

    # LLM layer (SPEC §5.4): per-attempt timeout, retries of transient errors, and a bound on
    # the total time one completion may take including retries.
    llm_timeout_seconds: float = 60.0
    llm_max_retries: int = 2
    llm_total_timeout_seconds: float = 90.0

    # How long an Idempotency-Key answers its repeats (from its first request), and how often
    # the delivery worker deletes the expired ones (app.stores.idempotency). Longer than any
    # retry schedule a client may have; at least the session lease (an in-flight claim must
    # not expire).
    idempotency_key_seconds: float = Field(default=24 * 3600, ge=600)
    idempotency_purge_seconds: float = Field(default=3600, gt=0)

    # A conversation turn holds a per-session lease so that messages of one session are
    # processed one at a time even across processes; a crashed process's lease expires.
    session_lease_seconds: float = 120.0

    # How long a process remembers a credential lookup (app.auth.cache): a key revoked or a
    # member removed elsewhere stops working within this bound. 0: look up on every request.
    auth_cache_seconds: float = 5.0

    # The embedded default's demo chatbot. Unset: the offline ``echo`` model, unless an
    # OpenAI/Anthropic key is found (read through these aliases, not CHATBOTS_-prefixed).
    demo_model: str | None = None
    openai_api_key: str | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    anthropic_api_key: str | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")

    # Delivery of bot-initiated messages (SPEC §6): the providers' base URLs (tests point them at
    # loopback fakes), SMTP for email, and whether webhook targets may be private addresses or
    # plain http (local development and tests only: otherwise an SSRF hole).
    telegram_api_base: str = "https://api.telegram.org"
    twilio_api_base: str = "https://api.twilio.com"
    meta_api_base: str = "https://graph.facebook.com"
    turnio_api_base: str = "https://whatsapp.turn.io"
    slack_api_base: str = "https://slack.com/api"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    webhook_allow_private: bool = False
    send_timeout_seconds: float = 30.0
    # CommCare Connect (SPEC §6): the Connect messaging server and this deployment's messaging
    # server credentials (HTTP Basic), issued by Connect. Server-wide, not per channel: Connect
    # knows this service as one messaging server whatever the chatbot. The messaging API is
    # PersonalID's (connectid.dimagi.com, as Open Chat Studio's default), not the marketplace's
    # (connect.dimagi.com).
    commcare_connect_server_url: str = "https://connectid.dimagi.com"
    commcare_connect_client_id: str | None = None
    commcare_connect_client_secret: str | None = None

    # The delivery worker (SPEC §6): inside each API process by default, and as `chatbots
    # worker`. A delivery gets ``delivery_max_attempts`` tries; the first retry waits
    # ``delivery_backoff_seconds``, each next one twice as long (±25 % jitter): 29 s doubling
    # spans about 15 minutes over 6 attempts. A claimed delivery is the worker's for
    # ``delivery_lease_seconds`` (a crashed worker's is taken again after it); at most
    # ``delivery_concurrency`` sends are in flight per worker.
    worker_in_process: bool = True
    delivery_max_attempts: int = Field(default=6, ge=1)
    delivery_backoff_seconds: float = Field(default=29.0, ge=0)
    delivery_lease_seconds: float = Field(default=60.0, gt=0)
    delivery_concurrency: int = Field(default=8, ge=1)
    # How often an idle worker looks for due deliveries without being woken (PostgreSQL wakes it
    # at once with NOTIFY; this covers retries coming due and, on SQLite, other processes).
    delivery_poll_seconds: float = Field(default=2.0, gt=0)

    # Rate limits (SPEC §4.7), each in the `limits` string syntax ("2000/5 minutes"). Counted in
    # this process's memory, or in Redis when ``redis_url`` is set ("async+redis://host:6379/0"):
    # with several processes or hosts only Redis gives them one count.
    rate_limit_enabled: bool = True
    rate_limit_team: str = "2000/5 minutes"  # per team, on incoming_message and trigger_bot
    rate_limit_auth_failures: str = "100/5 minutes"  # failed API authentications, per client IP
    rate_limit_login_account: str = "10/15 minutes"  # failed logins, per account
    rate_limit_login_ip: str = "20/15 minutes"  # failed logins, per client IP
    rate_limit_token: str = "60/minute"  # POST /o/token/, per client IP
    redis_url: str | None = None
    # Bound on one Redis call: a Redis that hangs costs a request this much, then it is let through.
    redis_timeout_seconds: float = Field(default=0.5, gt=0)

    # Browser sessions (SPEC §4.5): how long a login lasts (the session row's expiry and the
    # cookies' max-age).
    session_cookie_seconds: int = Field(default=14 * 24 * 3600, gt=0)
    # Proxies whose X-Forwarded-Proto / X-Forwarded-For `chatbots serve` believes (uvicorn's
    # forwarded_allow_ips: comma-separated addresses or networks, "*" for any, "" for none).
    # The scheme decides the cookies' Secure flag, so only a proxy you run may set it.
    forwarded_allow_ips: str = "127.0.0.1"
    # Worker processes of `chatbots serve` when ``--workers`` is not given: the container image
    # starts ``serve`` without it, so a deployment sizes the API with this setting alone.
    serve_workers: int = Field(default=1, ge=1)

    # OAuth2 authorization server (SPEC §4.4). Access tokens are short-lived bearer tokens;
    # refresh tokens rotate on every use, so their lifetime bounds an idle grant, not an active
    # one. Codes live 60 s (RFC 9700 asks for a short life; a client redeems one at once).
    oauth_access_token_seconds: int = Field(default=3600, ge=60)
    oauth_refresh_token_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    oauth_authorization_code_seconds: int = Field(default=60, ge=10, le=600)
    # The public client /docs' Authorize button uses (the demo registers it with the redirect
    # URIs of the addresses it serves; elsewhere register a public client and name it here).
    docs_oauth_client_id: str = "chatbots-docs"

    log_level: str = "INFO"
    # One JSON object per line, or plain text. Unset: text for SQLite (the embedded default, a
    # person at a terminal), JSON elsewhere (a log collector reads it). app.observability.logs
    log_format: Literal["json", "text"] | None = None

    # GET /metrics (Prometheus). Off: 404. With a token, a scrape must send it as
    # "Authorization: Bearer <token>" (401 otherwise); without one, anyone who reaches the port
    # reads it: keep /metrics off the public proxy, or set a token.
    metrics_enabled: bool = True
    metrics_token: str | None = None

    # On SIGTERM: requests in flight get this long to finish (new connections are refused at
    # once), then the in-process delivery worker's sends in flight get as long again before they
    # are cut off and their claims given back. The orchestrator's grace period (compose
    # stop_grace_period, Kubernetes terminationGracePeriodSeconds) must exceed twice this.
    shutdown_timeout_seconds: float = Field(default=30.0, ge=0)
    # Run migrations at start-up. Defaults to on for SQLite (the embedded default), off elsewhere
    # (run ``chatbots db upgrade`` once per release).
    auto_migrate: bool | None = None

    @field_validator(
        "rate_limit_team",
        "rate_limit_auth_failures",
        "rate_limit_login_account",
        "rate_limit_login_ip",
        "rate_limit_token",
    )
    @classmethod
    def _one_rate_limit(cls, value: str) -> str:
        parse(value)  # a typo fails at start-up, not on the first request
        return value

    @field_validator("secret_key_fallbacks", mode="before")
    @classmethod
    def _fallback_keys(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            listed = json.loads(text)  # a JSON error is a validation error, at start-up
            if not isinstance(listed, list) or not all(isinstance(k, str) for k in listed):
                raise ValueError("CHATBOTS_SECRET_KEY_FALLBACKS as JSON must be a list of strings")
            return tuple(k for k in listed if k)
        return tuple(k.strip() for k in text.split(",") if k.strip())

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

    @property
    def effective_secret_key(self) -> str:
        """The key that encrypts provider secrets. Required outside the embedded SQLite default."""
        if self.secret_key:
            return self.secret_key
        if self.is_sqlite:
            return EMBEDDED_SECRET_KEY
        raise RuntimeError(
            "CHATBOTS_SECRET_KEY must be set when the database is not the embedded SQLite default."
        )

    @property
    def encryption_keys(self) -> tuple[str, ...]:
        """The current key (encrypts and reads) and then the fallbacks (read only), in the order
        they are tried (``app.crypto``)."""
        return (self.effective_secret_key, *self.secret_key_fallbacks)


@lru_cache
def get_settings() -> Settings:
    return Settings()
