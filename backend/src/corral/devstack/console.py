"""What the embedded stack prints: one line per event, prefixed so it stands out from logs."""

from __future__ import annotations

import sys
import time


def say(message: str) -> None:
    print(message, flush=True)


def event(message: str) -> None:
    """A supervision event (a child died, restarted, gave up)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def banner(url: str, ready: dict[str, object], token: str, logs: str) -> None:
    say(f"\nCorral is up: {url}")
    say(f"Readiness: {ready.get('status')} {ready.get('problems') or ''}")
    say(f"Dev token (Authorization: Bearer …):\n{token}\n")
    say(f"Logs: {logs}  ·  Ctrl-C (or SIGTERM) stops everything; a crashed process is restarted.")
