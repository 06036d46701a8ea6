"""Training state as bytes: nested dicts and lists of JSON values and tensors, as one
safetensors blob whose header metadata holds the JSON of everything that is not a tensor.

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


def split_tree(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor by {"__tensor__": key}, collecting clones under `prefix/...`."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {str(k): split_tree(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [split_tree(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    return obj


def join_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: join_tree(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tree(v, tensors) for v in obj]
    return obj


def encode_state(tree: Any) -> tuple[bytes, Any]:
    """(the blob, its JSON part) of a state tree."""
    tensors: dict[str, torch.Tensor] = {}
    meta = split_tree(tree, "t", tensors)
    return st_save(tensors, metadata={META_KEY: json.dumps(meta)}), meta


def decode_state(data: bytes) -> Any:
    """The state tree of a blob; raises WireError if it is not one."""
    try:
        tensors = st_load(data)
        header_len = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8: 8 + header_len])
        meta = json.loads(header["__metadata__"][META_KEY])
        return join_tree(meta, tensors)
    except (SafetensorError, KeyError, ValueError, TypeError, struct.error) as exc:
        raise WireError(f"state blob does not parse: {str(exc)[:200]}") from None
