"""framestats producer: plans, submits and watches jobs. Never imports torch."""

__version__ = "0.1.0"
__all__ = ["__version__"]
