"""GPT-2 language models from a config (transformers), randomly initialized, in size presets.

- tiny: for tests (a few hundred thousand parameters with a small vocabulary).
- 10m (default): ~10M parameters with the default 8192-token BPE; trains on 2 CPU cores.
- 62m: the design's ~62M (GPT-2 width 512, 12 layers; 63M with GPT-2's 50257-token vocabulary,
  ~42M with an 8192-token one): for GPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 256},
    "10m": {"n_embd": 256, "n_layer": 10, "n_head": 8, "n_positions": 1024},
    "62m": {"n_embd": 512, "n_layer": 12, "n_head": 8, "n_positions": 1024},
}


def gpt2_config(preset: str, vocab_size: int, max_length: int, eos_id: int, **overrides: Any):
    from transformers import GPT2Config

    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose from {', '.join(PRESETS)}")
    dims = {**PRESETS[preset], **overrides}
    if max_length > dims["n_positions"]:
        raise ConfigError(f"max_length {max_length} exceeds the {preset} model's "
                          f"{dims['n_positions']} positions")
    return GPT2Config(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **dims)


def build_model(config: Any, seed: int) -> torch.nn.Module:
    """Same seed, same initial weights on every rank and for every method."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # GPT2LMHeadModel: silence the loss-type warning
    return model


def count_params(model: torch.nn.Module) -> int:
    """Distinct parameters (the tied embedding counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def block_class() -> type:
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    return GPT2Block


def load_model(model_dir: Path | str, device: str = "cpu") -> torch.nn.Module:
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise ConfigError(f"{path} holds no model (config.json missing); pass the checkpoint "
                          "folder written by train_lm (<out>/checkpoints/<run>)")
    model = GPT2LMHeadModel.from_pretrained(str(path), local_files_only=True)
    model.loss_type = "ForCausalLM"  # GPT2LMHeadModel: silence the loss-type warning
    return model.to(device).eval()

