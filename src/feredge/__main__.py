"""``python -m feredge``: the same as the ``feredge`` console script."""

import sys

from feredge.edge.cli.main import main

sys.exit(main())
