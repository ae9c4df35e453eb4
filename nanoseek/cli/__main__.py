"""`python -m nanoseek.cli ...` (what torchrun launches): the same as the `nanoseek` command."""

import sys

from nanoseek.cli import main

sys.exit(main())
