"""The worker side of ``circuit.analyze``: download, load into DuckDB, ask the model, run safely.

``analysis.run_analysis`` is the whole algorithm; the Celery task only wires it to the task
context. Nothing here imports the app.
"""
