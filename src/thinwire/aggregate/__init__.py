"""Aggregators: (weighted) mean / FedAvg, robust rules, reuse-or-drop of skipped nodes."""

from .aggregator import Aggregator, Contribution
from .rules import RULES, combine

__all__ = ["Aggregator", "Contribution", "RULES", "combine"]
