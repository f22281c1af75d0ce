"""``python -m loadtests.cli``: the ``turnbench`` command."""

from loadtests.cli.main import main

raise SystemExit(main())
