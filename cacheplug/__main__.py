"""``python -m cacheplug``: the ``cacheplug`` command."""

from __future__ import annotations

from cacheplug.cli import main

raise SystemExit(main())
