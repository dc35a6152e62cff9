"""Datasets for circuit analysis: uploads, the shared sample, owner-only access."""
