"""``python -m emberd`` is the same as the ``emberd`` command."""

import sys

from emberd.cli import main

sys.exit(main())
