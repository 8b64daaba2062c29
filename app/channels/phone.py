"""Phone numbers as WhatsApp wants them: E.164 (``+`` and digits), or a clear refusal.

trigger_bot normalises a WhatsApp identifier with ``to_e164`` (an invalid one is a 400), so one
participant is one row however the caller spelled the number, and senders get a number the
providers accept.
"""

import phonenumbers


class InvalidPhoneNumber(ValueError):
    """The identifier is not a phone number that could be dialled internationally."""


def to_e164(raw: str) -> str:
    """``"+27 82 123 4567"``, ``"27821234567"``, ``"+27-82-123-4567"`` → ``"+27821234567"``.

    There is no default region: identifiers come from every country, so a number must carry its
    country code. A bare run of digits is read as international (``+`` prefixed), the way
    WhatsApp itself writes numbers (``wa_id``).
    """
    text = raw.strip()
    # phonenumbers reads letters as a vanity keypad ("1-800-FLOWERS") and drops trailing junk,
    # which would turn a mistyped identifier into someone else's number: refuse letters outright.
    if any(char.isalpha() for char in text):
        raise InvalidPhoneNumber(f"{raw!r} is not a phone number: it contains letters")
    candidate = "+" + text if text.isdigit() else text
    try:
        number = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"{raw!r} is not a phone number: {exc}") from exc
    # is_possible checks the length for the country; is_valid also checks the number ranges in use.
    if not phonenumbers.is_possible_number(number) or not phonenumbers.is_valid_number(number):
        raise InvalidPhoneNumber(
            f"{raw!r} is not a valid phone number (international format with country code, e.g. +27821234567)"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
