"""JSON mode: parse an answer; the message asking the model to repair one that is not JSON."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


class NotJSON(ValueError):
    pass


def parse_answer(text: str) -> Any:
    """The JSON value of ``text``; a single surrounding Markdown code fence is tolerated."""
    candidate = text.strip()
    fenced = _FENCE.match(candidate)
    if fenced:
        candidate = fenced.group(1).strip()
    try:
        return json.loads(candidate)
    except json.JSONDecodeError as exc:
        raise NotJSON(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from exc


def repair_messages(bad_answer: str, problem: str) -> list[dict[str, Any]]:
    """Appended to the conversation: the bad answer, then the request to fix it."""
    return [
        {"role": "assistant", "content": bad_answer},
        {
            "role": "user",
            "content": (
                f"Your previous reply is not valid JSON ({problem}). Reply again with only the "
                "corrected JSON document: no explanation, no Markdown code fences."
            ),
        },
    ]
