"""Federated experts (seed 003): workers fine-tune one expert per specialty (FFA-LoRA) and
push pseudo-gradients on a timer; the coordinator aggregates each specialty exactly, merges
every expert into a versioned gateway model, and routes prompts to an expert (nearest
centroid, or lowest prompt loss).

Entry points: `thinwire coordinator --experts`, `thinwire worker --specialty ... --dataset
...`, `thinwire gateway`, `thinwire generate --coordinator-url ...` (cli.py).
"""
