"""Benchmarks that print figures and write reports; they assert nothing, CI does not time them.

- :mod:`~transferops_bench.seeds` (``make bench``): the default pipeline over several seeds;
- :mod:`~transferops_bench.methods` (``make bench-methods``): every transfer method on the embedded default,
  the label-efficiency curve and how often a label-free criterion picks a better epoch than the last;
- :mod:`~transferops_bench.targets` (``make bench-targets``): the default pipeline on generated targets of the
  kind a new user brings (colour, inverted polarity, an unseen font), against source-only and chance.
"""

from transferops_bench.methods import DEFAULT_CURVE, methods, methods_markdown
from transferops_bench.seeds import seeds, seeds_markdown
from transferops_bench.targets import TARGETS, targets, targets_markdown

__all__ = [
    "DEFAULT_CURVE",
    "TARGETS",
    "methods",
    "methods_markdown",
    "seeds",
    "seeds_markdown",
    "targets",
    "targets_markdown",
]
