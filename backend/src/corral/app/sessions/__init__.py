"""Research sessions: stateful Python per conversation (``/api/sessions``)."""
