"""``python -m skintumor.dashboard SWEEP [--dry-run]``: upload a sweep's offline W&B runs."""

import sys

from skintumor.dashboard.sync import main

sys.exit(main())
