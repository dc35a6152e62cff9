"""Corral's tools over the Model Context Protocol (see ``server.py`` and docs/mcp.md)."""

from corral.app.mcp.server import CorralMcp

__all__ = ["CorralMcp"]
