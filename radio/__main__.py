"""``python -m radio``: the same as the ``radio`` command."""

from radio.cli import main

raise SystemExit(main())
