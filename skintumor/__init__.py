"""skintumor: deep-learning classifiers for ultrasound images of benign skin tumours."""
__version__ = "0.1.0"
