"""The OAuth scopes of SPEC §4.4, with the descriptions the consent page and /docs show."""

INTERACT_SCOPE = "chatbots:interact"

SCOPES: dict[str, str] = {
    "chatbots:read": "Read chatbots",
    INTERACT_SCOPE: "Converse with a chatbot and trigger bot messages",
    "sessions:read": "Read sessions",
    "sessions:write": "Write sessions",
    "files:read": "Read files",
    "participants:read": "Read participants",
    "participants:write": "Write participants",
}
ALL_SCOPES = frozenset(SCOPES)
