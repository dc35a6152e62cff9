"""The embedded stack behind ``make up``: private Redis, the app, one worker per queue, beat.

- ``setup``: first-run setup (Redis binary, secrets, environment, the Python sandbox, migrations);
- ``supervisor``: starts the children and keeps them running — a child that dies is restarted
  with backoff (and the console says so); nothing outlives the stack;
- ``console``: what the stack prints;
- ``cli``: ``python -m corral.devstack`` (``make up``).

Everything lives under ``.corral/`` (Redis data with AOF on, the SQLite database, objects, logs,
the dev secret) so a restart keeps the user's data. Only Ctrl-C (SIGINT) or SIGTERM stops the
stack, both handled explicitly, so a stack started from a script in the background (where SIGINT
is inherited as ignored) still stops on either. Each child runs in its own process group with
``PR_SET_PDEATHSIG``: even if the supervisor is SIGKILLed, its children die with it.
"""

from corral.devstack.cli import main

__all__ = ["main"]
