"""MMRS: reproducible position-reasoning medical segmentation data (image + mask + spatial QA)."""

__version__ = "0.1.0"
