"""``python -m engine.cli``: the same entry point as the ``osupgrade`` script."""

from engine.cli.main import main

raise SystemExit(main())
