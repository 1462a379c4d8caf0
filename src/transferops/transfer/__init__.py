"""Transfer methods as strategy objects in one registry (``finetune.method`` names one)."""

from transferops.transfer import methods  # noqa: F401  (registers the built-in methods)
from transferops.transfer.base import STRATEGIES, Strategy, get_strategy, register

__all__ = ["STRATEGIES", "Strategy", "get_strategy", "register"]
