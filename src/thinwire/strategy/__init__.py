"""What the receiver does with what arrived: combining rules (mean, median, trimmed mean,
Krum), reuse/drop/accumulate of skipped nodes, staleness weighting, budgeted selection, the
server step, and a keyed form (one model per key)."""

from .keyed import KeyedStrategy
from .outer import OuterOptimizer
from .rules import RULES, combine
from .select import select_budget, select_top_k
from .server import apply_delta, change_sq, restore, snapshot
from .strategy import SKIPPED, WEIGHTS, Combined, Contribution, Strategy, check

__all__ = ["Combined", "Contribution", "KeyedStrategy", "OuterOptimizer", "RULES", "SKIPPED",
           "Strategy", "WEIGHTS", "apply_delta", "change_sq", "check", "combine", "restore",
           "select_budget", "select_top_k", "snapshot"]
