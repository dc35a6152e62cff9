"""Research sessions on python_q: stateful sandboxed kernels, warm, snapshotted, portable.

- ``guest/kernel.py``: runs in the sandbox (the zygote and the kernels it forks);
- ``zygote.py``: starting warm sandboxes (one bwrap per session) and the warm pool;
- ``kernel.py``: a live session seen from the host (calls, snapshot, restore);
- ``snapshot.py``: snapshots in the object store;
- ``host.py``: the per-worker process that holds the sessions;
- ``client.py`` and ``lifecycle.py``: how the worker starts the host and its pool children
  talk to it.
"""
