"""SQL storage: settings, engine and sessions, models (see ``models``)."""

from corral.app.db.engine import Database, SchemaNotReady
from corral.app.db.settings import DatabaseSettings

__all__ = ["Database", "DatabaseSettings", "SchemaNotReady"]
