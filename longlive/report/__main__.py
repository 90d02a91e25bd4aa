"""`python -m longlive.report RESULTS... --out DIR`."""

import sys

from longlive.report.cli import main

sys.exit(main())
