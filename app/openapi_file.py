"""The committed ``openapi.json`` (top of the repository): the document the service serves at
``/openapi.json`` under the default settings, for client generators and reviewers that read
the repository rather than a running service. ``tests/test_openapi_document.py`` keeps the two
equal; after changing the API, regenerate it with ``python -m app.openapi_file``."""

import json
from typing import Any

from app.config import REPO_ROOT, Settings

COMMITTED = REPO_ROOT / "openapi.json"


def default_document() -> dict[str, Any]:
    """Built without the environment: the defaults, not this machine's ``CHATBOTS_*``."""
    from app.main import create_app

    return create_app(Settings.model_construct()).openapi()


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    COMMITTED.write_text(render(default_document()), encoding="utf-8")
    print(f"wrote {COMMITTED}")
