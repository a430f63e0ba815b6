"""ssodlib: semi-supervised object detection, reproduced and compared on one code path."""

__version__ = "0.1.0"

SCALES = ("smoke", "mini", "paper")
