"""skintumor: deep-learning classifiers for ultrasound images of benign skin tumours."""

import os

# albumentations asks PyPI for its latest version on every import (2 s timeout): no network calls
# from clinical machines, and no 2 s stall per process where the network is firewalled
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
