"""``python -m npdg ...``: see :mod:`npdg.cli`."""

from npdg.cli import main

raise SystemExit(main())
