"""Model weights as files (npz or safetensors) and back into a model; HF folders.

Saved state holds a tied weight once (as `save_pretrained` does): Qwen2-0.5B ties its output
layer to the input embedding, so the file has `model.embed_tokens.weight` and no
`lm_head.weight`, and loading re-ties them rather than carrying two copies that could
drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError, DataError

Tensors = dict[str, torch.Tensor]
SUFFIXES = (".npz", ".safetensors")


def save_weights(tensors: Tensors, path: Path | str, metadata: dict[str, str] | None = None
                 ) -> Path:
    """`path` by its suffix: .npz (numpy arrays) or .safetensors (with `metadata`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {n: t.detach().float().contiguous().cpu() for n, t in tensors.items()}
    if path.suffix == ".npz":
        with open(path, "wb") as f:
            np.savez(f, **{n: t.numpy() for n, t in flat.items()})
    elif path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(flat, str(path), metadata=metadata or {})
    else:
        raise ConfigError(f"{path}: save weights as .npz or .safetensors")
    return path


def load_weights(path: Path | str) -> Tensors:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {n: torch.from_numpy(data[n].copy()) for n in data.files}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    raise ConfigError(f"{path}: weights are read from .npz or .safetensors")


def model_from_weights(config: Any, tensors: Tensors) -> torch.nn.Module:
    """A causal LM of `config` holding `tensors`; every weight must be given (a tied one
    once), so a file missing a layer fails here instead of generating noise."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config).float()
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {n for n in missing if _is_tied(model, n)}
    if set(missing) - tied or unexpected:
        raise DataError(f"weights do not fit the model: missing {sorted(set(missing) - tied)[:5]}"
                        f", unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    return model.eval()


def _is_tied(model: torch.nn.Module, name: str) -> bool:
    out = model.get_output_embeddings()
    return (getattr(model.config, "tie_word_embeddings", False) and out is not None
            and name.startswith("lm_head") and out.weight is model.get_input_embeddings().weight)


def export_hf(model: torch.nn.Module, tokenizer: Any, folder: Path | str) -> Path:
    """A folder `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer` load."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
