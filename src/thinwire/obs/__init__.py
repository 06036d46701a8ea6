"""Observability: byte ledger, results.jsonl, plots, progress."""
