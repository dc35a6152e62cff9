"""Imports every module that registers a tool, so ``TOOLS`` is complete once this is imported.

Add one import per tool module here.
"""

from corral.app.tools import registry  # noqa: F401  (echo, fail)
