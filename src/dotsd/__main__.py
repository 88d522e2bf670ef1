"""``python -m dotsd``: the same as the ``dotsd`` command."""

import sys

from dotsd.cli.main import main

sys.exit(main())
