"""schemathesis hooks for ``.ci/conformance.py``.

A generator repeats small values ("0", "00", ...), and an ``Idempotency-Key`` repeated with
another body is refused with 400 by design (SPEC §3.2: the key names one request), which the
``positive_data_acceptance`` check would count as a valid request rejected. So every valid key
(1 to 240 characters, not blank) gets a suffix unique in this run; keys outside the documented
rule are sent as generated, so the service's refusal of them is still checked.
"""

import itertools
from typing import Any

import schemathesis

HEADER = "Idempotency-Key"
_numbers = itertools.count()


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    headers = case.headers or {}
    key = headers.get(HEADER)
    if isinstance(key, str) and 1 <= len(key) <= 240 and key.strip():
        headers[HEADER] = f"{key}~{next(_numbers)}"
