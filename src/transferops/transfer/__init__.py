"""Transfer methods as strategy objects in one registry (``finetune.method`` names one)."""

from transferops.transfer import adaptation, distill, methods, self_training  # noqa: F401  (register the built-in methods)
from transferops.transfer.base import STRATEGIES, Strategy, TransferContext, get_strategy, register

__all__ = ["STRATEGIES", "Strategy", "TransferContext", "get_strategy", "register"]
