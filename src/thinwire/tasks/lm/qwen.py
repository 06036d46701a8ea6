"""A Qwen2-architecture causal LM from a config, with a locally trained chat tokenizer, saved
as a transformers folder: the offline stand-in for `qwen/Qwen2-0.5B-Instruct`.

Tests and benchmarks need the real architecture (grouped-query attention, q/k/v biases,
tied embeddings as in Qwen2-0.5B) without a download, so the model is built from a
`Qwen2Config` and the tokenizer is a byte-level BPE trained on the given texts, with
ChatML's `<|im_start|>`/`<|im_end|>` turns as its chat template.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .tokenizer import train_tokenizer

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

SIZES: dict[str, dict[str, int]] = {
    # a few hundred thousand parameters: unit and process tests
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    # ~1M with a 2k vocabulary: the benchmark's short run on 2 busy CPU cores
    "mini": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    # ~6M with a 4k vocabulary
    "small": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6,
              "num_attention_heads": 8, "num_key_value_heads": 2},
    # ~14M with a 4k vocabulary: the benchmark's full run
    "medium": {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 8,
               "num_attention_heads": 6, "num_key_value_heads": 2},
}


def chat_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """Byte-level BPE over `texts` plus the ChatML turn tokens and template; the turn end is
    also the end-of-sequence token, so generation stops at the end of the answer."""
    tok = train_tokenizer(texts, vocab_size)
    tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tok.chat_template = CHATML
    tok.eos_token = IM_END
    return tok


def qwen2_config(size: str, vocab_size: int, max_positions: int = 512, **overrides: Any):
    from transformers import Qwen2Config

    dims = {**SIZES[size], **overrides}
    return Qwen2Config(vocab_size=vocab_size, max_position_embeddings=max_positions,
                       tie_word_embeddings=True, rope_theta=10000.0, **dims)


def build_qwen2(config: Any, seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).float()


def save_base(folder: Path | str, model: torch.nn.Module, tok: Any) -> Path:
    """Model and tokenizer in one transformers folder (what `--base-model DIR` reads)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.eos_token_id = tok.convert_tokens_to_ids(tok.eos_token)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def make_tiny_base(folder: Path | str, texts: Iterable[str], size: str = "tiny",
                   vocab_size: int = 512, max_positions: int = 512, seed: int = 0) -> Path:
    """Train a tokenizer on `texts`, build a Qwen2 of `size` and save both to `folder`."""
    tok = chat_tokenizer(texts, vocab_size)
    model = build_qwen2(qwen2_config(size, len(tok), max_positions), seed)
    return save_base(folder, model, tok)
