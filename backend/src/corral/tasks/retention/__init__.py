"""Retention: deleting user records (and their objects) older than their kind's setting."""
