"""`python -m hybridbus`: the command line (see `hybridbus.cli`)."""

from hybridbus.cli import main

raise SystemExit(main())
