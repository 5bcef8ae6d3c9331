"""`python -m distill_export.cli ...`, as the tests and tools run it."""

import sys

from distill_export.entry import main

sys.exit(main())
