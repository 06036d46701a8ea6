"""Training state as bytes: nested dicts and lists of JSON values and tensors, as one
safetensors blob whose header metadata holds a JSON document: the tree with each tensor as
null, plus a separate list of [path, tensor key] references (typed by position, not by a
marker a stored value could imitate).

The service's coordinator snapshots its state this way; a swarm peer checkpoints and hands its
model and optimizer state to a rejoining peer this way. Nothing is pickled, so bytes from a
peer cannot run code; a blob that does not parse raises WireError.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import WireError

META_KEY = "thinwire"
ENCODING = 3  # tree + separate tensor references (2: in-tree {"__tensor__": key} markers)


def split_tree(obj: Any, tensors: dict[str, torch.Tensor], refs: list[list],
               path: list | None = None) -> Any:
    """A JSON copy of `obj` in which each tensor is None, listed in `refs` as [path, key]
    (path: dict keys and list indices from the root), its clone in `tensors[key]`. The
    references live beside the tree, not in it, so no value inside the tree (a worker's
    capabilities, say) can pose as one."""
    path = [] if path is None else path
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu().contiguous().clone()
        refs.append([list(path), key])
        return None
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    else:
        return obj
    out: Any = {} if isinstance(obj, dict) else [None] * len(items)
    for k, v in items:
        path.append(k)
        out[k] = split_tree(v, tensors, refs, path)
        path.pop()
    return out


def join_tree(tree: Any, refs: list, tensors: dict[str, torch.Tensor]) -> Any:
    """Put each referenced tensor back where `split_tree` found it."""
    for ref in refs:
        path, key = ref
        if not path or key not in tensors:
            raise ValueError(f"bad tensor reference {ref!r}")
        parent = tree
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if not isinstance(parent, (dict, list)) or parent[last] is not None:
            raise ValueError(f"tensor reference {ref!r} does not point at a placeholder")
        parent[last] = tensors[key]
    return tree


def encode_state(tree: Any) -> tuple[bytes, dict[str, Any]]:
    """(the blob, its JSON document) of a state tree."""
    tensors: dict[str, torch.Tensor] = {}
    refs: list[list] = []
    meta = {"encoding": ENCODING, "tree": split_tree(tree, tensors, refs), "tensors": refs}
    return st_save(tensors, metadata={META_KEY: json.dumps(meta)}), meta


def read_blob(data: bytes) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON document, tensors) of a blob, whatever its encoding; raises WireError."""
    try:
        tensors = st_load(data)
        header_len = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8: 8 + header_len])
        return json.loads(header["__metadata__"][META_KEY]), tensors
    except (SafetensorError, KeyError, TypeError, ValueError, struct.error,
            RecursionError) as exc:
        raise WireError(f"state blob does not parse ({type(exc).__name__}: "
                        f"{str(exc)[:200]})") from None


def decode_state(data: bytes) -> Any:
    """The state tree of a blob of this encoding; raises WireError if it is not one."""
    meta, tensors = read_blob(data)
    try:
        if not isinstance(meta, dict) or meta.get("encoding") != ENCODING:
            raise ValueError(f"encoding {meta.get('encoding') if isinstance(meta, dict) else '?'}"
                             f", this build reads {ENCODING}")
        return join_tree(meta["tree"], meta["tensors"], tensors)
    except (KeyError, IndexError, TypeError, ValueError, RecursionError) as exc:
        raise WireError(f"state blob does not parse ({type(exc).__name__}: "
                        f"{str(exc)[:200]})") from None
