"""Imports every module that registers a tool, so ``TOOLS`` is complete once this is imported.

Add one import per tool module here.
"""

import corral.app.tools.llm_generate  # noqa: F401
from corral.app.tools import (
    circuit_population_analysis,  # noqa: F401
    registry,  # noqa: F401  (echo, fail)
    run_python,  # noqa: F401
)
