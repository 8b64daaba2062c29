# syntax=docker/dockerfile:1
# The Chatbots API image: `chatbots serve` on port 8000 by default; `worker`, `db upgrade` and every
# other `chatbots` sub-command are the same image with another command (compose.yaml runs all three).
#
# The base is Python 3.11 slim (Debian bookworm), pinned by its full tag and by the digest of its
# multi-platform index: the digest decides the bytes, the tag says what they are. Both stages use
# it, so the venv built in the first runs on the same interpreter in the second. To move to a newer
# patch release, change tag and digest together (`docker buildx imagetools inspect <tag>`).
ARG PYTHON_IMAGE=python:3.11.16-slim-bookworm@sha256:528257d48c1da0dcecc2e725d1ae34498d60c965f1241e39cd6a85a8859bdf84

# ---- build: a venv holding exactly the lock file's versions, and the project --------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /srv/chatbots

# The dependencies alone first, so this layer is rebuilt only when the lock changes. `--no-deps`:
# the lock is the complete set, nothing is resolved beyond it (`pip check` proves it complete);
# `--only-binary`: wheels only, nothing is compiled (the slim base has no compiler, on purpose).
# The venv has no pip of its own: the base image's pip installs into it (`--python`).
COPY requirements.lock ./
RUN python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --no-deps --only-binary=:all: \
        -r requirements.lock \
    && pip --python /opt/venv/bin/python check

# The project, editable: the code stays in /srv/chatbots next to `migrations/` and `alembic.ini`,
# which `chatbots db upgrade` finds beside the `app` package (app/config.py REPO_ROOT).
COPY pyproject.toml alembic.ini ./
COPY migrations ./migrations
COPY app ./app
RUN pip --python /opt/venv/bin/python install --no-cache-dir --no-deps -e . \
    && /opt/venv/bin/python -m compileall -q app migrations

# ---- runtime: the venv and the code, run by a user that owns neither ----------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# The embedded SQLite default (`docker run` with no database configured) writes ./chatbots.db in
# the working directory: the service user's home, the only place it may write.
RUN groupadd --system --gid 10001 chatbots \
    && useradd --system --uid 10001 --gid chatbots --home-dir /var/lib/chatbots --create-home \
        --shell /usr/sbin/nologin chatbots
COPY --from=build /opt/venv /opt/venv
COPY --from=build /srv/chatbots /srv/chatbots
WORKDIR /var/lib/chatbots
# By number, not name: a runtime that checks "not root" (Kubernetes' runAsNonRoot) reads the number.
USER 10001:10001

EXPOSE 8000
# Liveness with the interpreter the image already has (no curl in the image): urlopen raises on
# a refused connection, a timeout or a non-2xx status, which exits 1, "unhealthy".
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# All interfaces, since the container's network is its own; X-Forwarded-* are believed only from
# CHATBOTS_FORWARDED_ALLOW_IPS (default 127.0.0.1: set it to the load balancer's address) and
# the number of worker processes is CHATBOTS_SERVE_WORKERS (default 1). SIGTERM stops it
# gracefully: requests in flight finish, then it exits 0.
ENTRYPOINT ["chatbots"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
