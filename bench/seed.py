"""Seed benchmark users (each with its own write API key) in one process, via the admin services.

One participant = one user, and turns within a session are serialised, so every virtual client
of the load generator needs its own user and key. Creating them one CLI call at a time would
take a second each; here they are made in one transaction through ``app.services.admin``.

    CHATBOTS_DATABASE_URL=... CHATBOTS_SECRET_KEY=... \\
        python -m bench.seed --team bench --users 66            # prints JSON: [{"email", "key"}]

``--bulk`` writes the same rows (user, membership, write key) for thousands of users in three
batched INSERTs through the ORM models instead of the admin services' checked, savepointed
inserts one at a time (about 7 ms a user): the ``fresh`` scenario needs a new user per request.
``--prefix`` names them apart from the load users (``bench-new-00000@bench.example``).

With ``--full`` it also creates the team, an ``openai_compatible`` provider pointing at
``--api-base`` and one published chatbot per ``--model`` (the fallback if the CLI cannot).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


def user_email(index: int, prefix: str = "bench-user") -> str:
    return f"{prefix}-{index:03d}@bench.example"


async def add_users_one_by_one(session: Any, admin: Any, team: str, emails: list[str]) -> list[str]:
    """Through the admin services, as an operator would: every check, one user at a time."""
    keys = []
    for email in emails:
        await admin.create_user(session, email, team, "member")
        _, raw = await admin.create_api_key(session, email, team, "bench", write=True)
        keys.append(raw)
    return keys


async def add_users_bulk(session: Any, team: str, emails: list[str]) -> list[str]:
    """The rows ``add_users_one_by_one`` writes, in three batched INSERTs (users, memberships,
    keys): the emails are new and the team exists, so the services' checks have nothing to find."""
    from app.auth.api_keys import generate_api_key
    from app.models import ApiKey, Membership, Role, User
    from app.services.admin import get_team

    team_id = (await get_team(session, team)).id
    users = [User(email=email) for email in emails]
    session.add_all(users)
    await session.flush()  # the users' ids, for the memberships and keys
    generated = [generate_api_key() for _ in users]
    session.add_all([Membership(team_id=team_id, user_id=u.id, role=Role.member) for u in users])
    session.add_all([
        ApiKey(team_id=team_id, user_id=u.id, name="bench", prefix=g.prefix, key_hash=g.key_hash,
               read_only=False)
        for u, g in zip(users, generated, strict=True)
    ])  # fmt: skip
    await session.flush()
    return [g.key for g in generated]


async def seed(args: argparse.Namespace) -> dict[str, Any]:
    from app.config import Settings
    from app.db import engine_for, make_sessionmaker
    from app.services import admin

    settings = Settings()
    engine = engine_for(settings)
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
            indexes = range(args.first, args.first + args.users)
            emails = [user_email(i, args.prefix) for i in indexes]
            if args.bulk:
                keys = await add_users_bulk(session, args.team, emails)
            else:
                keys = await add_users_one_by_one(session, admin, args.team, emails)
            out["users"] = [{"email": e, "key": k} for e, k in zip(emails, keys, strict=True)]
            await session.commit()
    finally:
        await engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Seed benchmark users and write API keys.")
    parser.add_argument("--team", required=True, help="team slug")
    parser.add_argument("--users", type=int, default=66)
    parser.add_argument("--first", type=int, default=0, help="index of the first user")
    parser.add_argument("--prefix", default="bench-user",
                        help="emails <prefix>-<index>@bench.example")
    parser.add_argument("--bulk", action="store_true",
                        help="batched INSERTs instead of the admin services (for thousands)")
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
