"""python -m sleep_lm.report WORKDIR... --out OUT (see sleep_lm.report.write)."""

import sys

from sleep_lm.report.write import main

sys.exit(main())
