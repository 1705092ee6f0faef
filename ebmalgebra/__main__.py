"""``python -m ebmalgebra``: the command-line interface (see :mod:`ebmalgebra.cli`)."""

from ebmalgebra.cli import main

raise SystemExit(main())
