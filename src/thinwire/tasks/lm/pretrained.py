"""A pretrained causal LM as the shared base of fine-tuning: from a local folder, the Hugging
Face hub or ModelScope, always in fp32 on the CPU, with a fingerprint.

Every party of a fine-tuning run (workers, the coordinator, export and routing clients)
must hold the same base, or adapters trained on one are applied to another; the fingerprint
(architecture, a slice of the embedding and the tokenizer) lets a coordinator refuse a worker
whose base differs. A folder holding config.json but no weights is a "config-only" model,
initialized from seed 0 the same way everywhere (offline tests).
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError
from .tokenizer import tokenizer_hash

DEFAULT_BASE = "qwen/Qwen2-0.5B-Instruct"
WEIGHT_FILES = ("*.safetensors", "*.bin")
ARCH_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
             "intermediate_size", "num_attention_heads", "num_key_value_heads",
             "tie_word_embeddings")


@dataclass
class Base:
    model: torch.nn.Module
    tokenizer: Any
    name: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.model, self.tokenizer)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_base(name: str | Path = DEFAULT_BASE, use_huggingface: bool = False) -> Base:
    """A local folder if `name` is one, else a download from the HF hub
    (`use_huggingface`) or ModelScope (the seed's default)."""
    name = str(name)
    folder = Path(name).expanduser()
    if not folder.is_dir():
        folder = Path(hub_folder(name) if use_huggingface else modelscope_folder(name))
    return load_folder(folder, name)


def hub_folder(name: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=name)
    except Exception as exc:  # noqa: BLE001  network, auth, unknown repo: one line
        raise ConfigError(f"cannot fetch {name!r} from the Hugging Face hub: "
                          f"{type(exc).__name__}: {exc}") from None


def modelscope_folder(name: str) -> str:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ConfigError(f"--base-model {name!r} is not a local folder and ModelScope is not "
                          "installed: pip install 'thinwire[modelscope]', or pass "
                          "--use-huggingface to load it from the Hugging Face hub") from None
    try:
        return snapshot_download(name)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot fetch {name!r} from ModelScope: "
                          f"{type(exc).__name__}: {exc}") from None


def load_folder(folder: Path, name: str | None = None) -> Base:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} holds no transformers model (config.json missing)")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {folder}: {exc}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if any(folder.glob(p) for p in WEIGHT_FILES):
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                     dtype=torch.float32)
    else:  # config only: the same seeded initialization on every machine
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).float()
    return Base(model.eval(), tok, name or str(folder))


def fingerprint(model: torch.nn.Module, tok: Any) -> str:
    """Architecture, the first 4096 embedding values and the tokenizer, hashed."""
    conf = model.config.to_dict()
    arch = json.dumps({k: conf.get(k) for k in ARCH_KEYS}, sort_keys=True)
    emb = model.get_input_embeddings().weight.detach().reshape(-1)[:4096].float()
    h = hashlib.sha256(arch.encode())
    h.update(emb.numpy().tobytes())
    h.update(tokenizer_hash(tok).encode())
    return h.hexdigest()[:24]


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers saved with a model, a tied weight once (as save_pretrained)."""
    saved = set(model.state_dict())
    state = {n: p.detach() for n, p in model.named_parameters()}
    state.update({n: b.detach() for n, b in model.named_buffers()
                  if n in saved and b.is_floating_point()})
    return state


def base_files(base: Base) -> dict[str, str]:
    """config.json and the tokenizer files, base64 encoded: what a client needs beside the
    weights to rebuild the model."""
    with tempfile.TemporaryDirectory() as tmp:
        base.tokenizer.save_pretrained(tmp)
        base.model.config.save_pretrained(tmp)
        gen = getattr(base.model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        return {p.name: base64.b64encode(p.read_bytes()).decode()
                for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def write_files(files: dict[str, str], folder: Path | str) -> Path:
    """The inverse of `base_files`: the files written into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if Path(name).name != name or name.startswith("."):
            raise ConfigError(f"refusing base file name {name!r}")
        (folder / name).write_bytes(base64.b64decode(data))
    return folder
