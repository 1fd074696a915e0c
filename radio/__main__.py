"""``python -m radio``: the same as the ``radio`` command."""

from radio.cli.main import main

raise SystemExit(main())
