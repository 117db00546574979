"""`python -m meterveil.host.cli` runs the `meterveil` command."""

import sys

from meterveil.host.cli.main import main

sys.exit(main())
