"""`python -m whisfusion ...`: the same as the `whisfusion` command."""

import sys

from whisfusion.cli import main

sys.exit(main())
