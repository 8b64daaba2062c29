"""``chatbots user set-password``: the password from one line of standard input, checked before
anything is saved, never printed; the user's browser sessions end. Run through typer's
CliRunner against the test database, like tests/test_cli.py (plain ``def``: the CLI runs its
own event loop)."""

import json
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.passwords import verify_password
from app.crypto import sha256_hex
from app.db import utcnow
from app.models import Membership, User, WebSession
from tests.test_cli import db as in_database
from tests.test_cli import env, invoke, member, one, team  # noqa: F401 (env, member, team: fixtures)

SECRET = "a long enough secret"


def password_hash(database_url: str, email: str) -> str | None:
    return one(database_url, select(User.password_hash).where(User.email == email))


def test_set_password_reads_one_line_of_stdin_and_prints_nothing_secret(env, member):
    result = invoke("user", "set-password", "--email", member.upper(), input=f"{SECRET}\nnext line\n")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert result.stdout.strip() == f"Password set for {member}; ended 0 browser session(s)."
    stored = password_hash(env, member)
    assert stored is not None and SECRET not in stored
    assert verify_password(SECRET, stored)
    assert not verify_password(SECRET + "\n", stored)  # the line ending is not part of it


def test_set_password_json(env, member):
    result = invoke("user", "set-password", "--email", member, "--json", input=f"{SECRET}\r\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"email": member, "password_set": True, "sessions_ended": 0}
    assert verify_password(SECRET, password_hash(env, member))


def test_set_password_ends_the_users_browser_sessions(env, member):
    user_id = one(env, select(User.id).where(User.email == member))
    team_id = one(env, select(Membership.team_id).where(Membership.user_id == user_id))

    async def add_two_sessions(session: AsyncSession) -> None:
        now = utcnow()
        for n in range(2):
            session.add(WebSession(session_hash=sha256_hex(f"{member}/{n}"), user_id=user_id,
                                   team_id=team_id, created_at=now, expires_at=now + timedelta(hours=1)))  # fmt: skip
        await session.commit()

    in_database(env, add_two_sessions)
    result = invoke("user", "set-password", "--email", member, "--json", input=f"{SECRET}\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sessions_ended"] == 2
    assert one(env, select(func.count()).select_from(WebSession).where(WebSession.user_id == user_id)) == 0


def _refused(member: str, line: str, message: str, env: str) -> None:
    before = password_hash(env, member)
    result = invoke("user", "set-password", "--email", member, input=line)
    assert result.exit_code == 1, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""
    assert password_hash(env, member) == before  # nothing saved


def test_empty_password_is_refused_and_nothing_saved(env, member):
    _refused(member, "\n", "Error: The password may not be empty.", env)


def test_no_input_at_all_is_refused(env, member):
    _refused(member, "", "Error: The password may not be empty.", env)


def test_short_password_is_refused_and_nothing_saved(env, member):
    _refused(member, "seven77\n", "Error: The password must have at least 8 characters.", env)


def test_unknown_user_is_refused(env, member):
    _refused(member.replace("@", "-nobody@"), f"{SECRET}\n", "Error: No user with email", env)
