"""Seed benchmark users (each with its own write API key) in one process, via the admin services.

One participant = one user, and turns within a session are serialised, so every virtual client
of the load generator needs its own user and key. Creating them one CLI call at a time would
take a second each; here they are made in one transaction through ``app.services.admin``.

    CHATBOTS_DATABASE_URL=... CHATBOTS_SECRET_KEY=... \\
        python -m bench.seed --team bench --users 66            # prints JSON: [{"email", "key"}]

With ``--full`` it also creates the team, an ``openai_compatible`` provider pointing at
``--api-base`` and one published chatbot per ``--model`` (the fallback if the CLI cannot).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


def user_email(index: int) -> str:
    return f"bench-user-{index:03d}@bench.example"


async def seed(args: argparse.Namespace) -> dict[str, Any]:
    from app.config import Settings
    from app.db import make_engine, make_sessionmaker
    from app.services import admin

    settings = Settings()
    engine = make_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    out: dict[str, Any] = {"users": [], "chatbots": {}}
    try:
        async with make_sessionmaker(engine)() as session:
            if args.full:
                await admin.create_team(session, args.team, "Benchmark team")
                await admin.create_provider(
                    session, settings, args.team, "fake", "openai_compatible",
                    args.api_base, "bench-fake-key", {},
                )  # fmt: skip
                for model in args.model:
                    head = await admin.create_chatbot(
                        session, args.team, f"bench {model}", "fake", model,
                        "You are a benchmark bot. Answer briefly.",
                    )  # fmt: skip
                    await admin.publish_chatbot(session, head.public_id, "bench")
                    out["chatbots"][model] = str(head.public_id)
            for i in range(args.first, args.first + args.users):
                email = user_email(i)
                await admin.create_user(session, email, args.team, "member")
                _, raw = await admin.create_api_key(session, email, args.team, "bench", write=True)
                out["users"].append({"email": email, "key": raw})
            await session.commit()
    finally:
        await engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Seed benchmark users and write API keys.")
    parser.add_argument("--team", required=True, help="team slug")
    parser.add_argument("--users", type=int, default=66)
    parser.add_argument("--first", type=int, default=0, help="index of the first user")
    parser.add_argument("--full", action="store_true", help="also team, provider, chatbots")
    parser.add_argument("--api-base", help="the fake LLM's base URL (with --full)")
    parser.add_argument("--model", action="append", default=[], help="a chatbot per model")
    args = parser.parse_args(argv)
    if args.full and not args.api_base:
        parser.error("--full needs --api-base")
    print(json.dumps(asyncio.run(seed(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
