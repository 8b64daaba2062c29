"""The message a chatbot writes when asked to speak first (SPEC §5.5).

``prompt_text`` is an instruction, not the text to send: the chatbot's own model (its published
version's provider and model) writes the message, with a fixed instruction on top, the chatbot's
system prompt as its persona, the participant's data, the page context, the current time and the
last ten messages of the conversation; the instruction is the user turn. The instruction itself
is never stored as a message: only what the model wrote is.
"""

from datetime import datetime
from typing import Any

import orjson

from app.services import prompt
from app.stores.base import BotConfig, StoredMessage

HISTORY_MESSAGES = 10
INSTRUCTION = (
    "You are writing a message that will be sent to the user on your behalf, starting the "
    "conversation yourself. The user's turn below is an instruction from the team that runs you, "
    "not a message from the user: follow it. Write the message to send to the user; reply in the "
    "language of the recent conversation; output only the message."
)


def message_request(
    bot: BotConfig,
    instruction: str,
    history: list[StoredMessage],
    participant_data: dict[str, Any],
    session_state: dict[str, Any],
    now: datetime | None = None,
) -> list[dict[str, str]]:
    """The model's input. ``history`` is newest first (as the store reads it)."""
    persona = prompt.render_system_prompt(
        bot.system_prompt,
        participant_data=participant_data,
        session_state=session_state,
        source_material=bot.source_material,
        now=now,
    )
    parts = [INSTRUCTION]
    if persona:
        parts.append(f"Your persona and instructions:\n{persona}")
    if participant_data:
        parts.append(f"What is known about the user:\n{_json(participant_data)}")
    if session_state.get("page_context"):
        parts.append(f"The page the user is on:\n{_json(session_state['page_context'])}")
    parts.append(f"Current time: {prompt.current_datetime(participant_data, now)}")
    messages = [{"role": "system", "content": "\n\n".join(parts)}]
    messages.extend(prompt.to_openai(m) for m in reversed(history[:HISTORY_MESSAGES]))
    messages.append({"role": "user", "content": instruction})
    return messages


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_INDENT_2).decode()
