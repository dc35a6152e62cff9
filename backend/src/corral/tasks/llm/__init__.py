"""The worker side of ``llm.generate``: clients, retries, fallbacks, JSON repair, cache, streaming.

``generate.run_generation`` is the whole algorithm; the Celery task only wires it to the task
context. Nothing here imports the app.
"""
