"""`python -m bridge` is the same as the `fleet-bridge` console script."""

from bridge.cli import main

raise SystemExit(main())
