"""transferops: move a model trained on one domain onto another, reproducibly, and ship it."""

__version__ = "0.1.0"
