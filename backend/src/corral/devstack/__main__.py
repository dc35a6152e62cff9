"""``python -m corral.devstack``: run the whole stack (``make up``)."""

from corral.devstack.cli import main

raise SystemExit(main())
