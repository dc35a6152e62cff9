"""Daily budgets per user: model tokens, sandbox CPU-seconds, analysis rows scanned."""
