"""Partition a dataset across nodes: IID, Dirichlet label skew, or FedAvg's pathological shards.

Every sample lands in exactly one node and no node is empty; the same (labels, nodes, spec,
seed) always gives the same partition.

    iid              uniform random, sizes differ by at most one
    dirichlet:ALPHA  per class, proportions over nodes ~ Dir(ALPHA); small ALPHA = more skew
    shards:K         each node gets K single-class shards, so at most K classes
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError

SPEC_FORMS = "'iid', 'dirichlet:ALPHA' (ALPHA > 0, e.g. dirichlet:0.5) or 'shards:K' (K >= 1)"


def parse_spec(spec: str) -> tuple[str, float]:
    """'iid' -> ('iid', 0); 'dirichlet:0.3' -> ('dirichlet', 0.3); 'shards:2' -> ('shards', 2)."""
    kind, _, arg = str(spec).strip().partition(":")
    kind = kind.strip().lower()
    if kind == "iid" and not arg:
        return kind, 0.0
    try:
        value = float(arg) if kind == "dirichlet" else int(arg) if kind == "shards" else None
    except ValueError:
        value = None
    if value is None or not np.isfinite(value) or value <= 0:
        raise ConfigError(f"bad split spec {spec!r}; valid forms: {SPEC_FORMS}")
    return kind, float(value)


def split_indices(labels: torch.Tensor, nodes: int, spec: str, seed: int) -> list[torch.Tensor]:
    """Sample indices (int64, sorted) for each of `nodes` nodes."""
    kind, arg = parse_spec(spec)
    labels_np = labels.detach().cpu().reshape(-1).long().numpy()
    n = len(labels_np)
    if nodes < 1 or nodes > n:
        raise ConfigError(f"cannot split {n} samples over {nodes} nodes: need 1 <= nodes <= {n}")
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = np.array_split(rng.permutation(n), nodes)
    elif kind == "dirichlet":
        parts = dirichlet_parts(labels_np, nodes, arg, rng)
    else:
        parts = shard_parts(labels_np, nodes, int(arg), rng)
    return [torch.from_numpy(np.sort(p).astype(np.int64)) for p in parts]


def dirichlet_parts(labels: np.ndarray, nodes: int, alpha: float,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, cut a shuffled index list at Dir(alpha)-distributed fractions."""
    buckets: list[list[np.ndarray]] = [[] for _ in range(nodes)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        props = rng.dirichlet(np.full(nodes, alpha))
        cuts = np.floor(np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
        for node, chunk in enumerate(np.split(idx, cuts)):
            buckets[node].append(chunk)
    parts = [np.concatenate(b) if b else np.empty(0, np.int64) for b in buckets]
    return fill_empty(parts, rng)


def fill_empty(parts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Give each empty node one random sample from the currently largest node."""
    for node in range(len(parts)):
        if len(parts[node]) == 0:
            donor = max(range(len(parts)), key=lambda i: len(parts[i]))
            pick = rng.integers(len(parts[donor]))
            parts[node] = parts[donor][pick:pick + 1]
            parts[donor] = np.delete(parts[donor], pick)
    return parts


def shards_per_class(counts: np.ndarray, total: int) -> np.ndarray:
    """Split `total` shards over classes proportionally to size, at least one per class and at
    most one per sample (so every shard is non-empty and single-class)."""
    shards = np.clip(np.floor(total * counts / counts.sum()).astype(np.int64), 1, counts)
    while shards.sum() < total:  # give to the class with the biggest shards (<= #classes steps)
        room = np.where(shards < counts, counts / shards, -1.0)
        shards[int(np.argmax(room))] += 1
    while shards.sum() > total:  # take from the class with the smallest shards
        room = np.where(shards > 1, counts / shards, np.inf)
        shards[int(np.argmin(room))] -= 1
    return shards


def shard_parts(labels: np.ndarray, nodes: int, k: int,
                rng: np.random.Generator) -> list[np.ndarray]:
    """FedAvg's pathological non-IID split, with shards kept within one class."""
    classes, counts = np.unique(labels, return_counts=True)
    total = nodes * k
    if total < len(classes) or total > len(labels):
        raise ConfigError(
            f"shards:{k} over {nodes} nodes makes {total} shards, but every sample must go to a "
            f"node and each shard holds one class: need {len(classes)} (classes present) <= "
            f"nodes*K <= {len(labels)} (samples); change K or the node count")
    shards = []
    for cls, count in zip(classes, shards_per_class(counts, total)):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        shards.extend(np.array_split(idx, count))
    order = rng.permutation(total)
    return [np.concatenate([shards[s] for s in order[i * k:(i + 1) * k]]) for i in range(nodes)]


def class_histograms(labels: torch.Tensor, parts: list[torch.Tensor],
                     num_classes: int) -> list[list[int]]:
    """Per node, the number of samples of each class."""
    flat = labels.reshape(-1).long().cpu()
    return [torch.bincount(flat[p.cpu()], minlength=num_classes).tolist() for p in parts]


def label_skew(labels: torch.Tensor, parts: list[torch.Tensor], num_classes: int) -> float:
    """Mean total-variation distance between each node's label distribution and the global one:
    0 for a perfectly IID split, approaching 1 when nodes see disjoint classes."""
    hist = torch.tensor(class_histograms(labels, parts, num_classes), dtype=torch.float64)
    local = hist / hist.sum(1, keepdim=True).clamp_min(1)
    glob = hist.sum(0) / hist.sum()
    return float(0.5 * (local - glob).abs().sum(1).mean())


def format_histograms(hists: list[list[int]], max_rows: int = 20) -> str:
    """A plain-text table, one row per node (the first `max_rows`), plus a total row."""
    num_classes = len(hists[0]) if hists else 0
    rows = [[f"node {i}", *map(str, h), str(sum(h))] for i, h in enumerate(hists[:max_rows])]
    if len(hists) > max_rows:
        rows.append([f"... {len(hists) - max_rows} more"] + [""] * (num_classes + 1))
    totals = [sum(col) for col in zip(*hists)] if hists else []
    rows.append(["total", *map(str, totals), str(sum(totals))])
    header = ["", *(f"c{c}" for c in range(num_classes)), "n"]
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths))
                     for r in [header, *rows])
