"""The causal language-model task: GPT-2 models in size presets, a locally trained byte-level
BPE tokenizer, text corpora cut into cached token blocks, and evaluation (loss, perplexity).

Runtimes that train LMs (the collective DDP/FSDP trainer, federated fine-tuning) build on it;
it imports no runtime.
"""

from .evaluate import LMScore, evaluate, token_losses
from .model import PRESETS, block_class, build_model, count_params, gpt2_config, load_model
from .tokenizer import load_tokenizer, save_tokenizer, tokenizer_hash, train_tokenizer

__all__ = ["LMScore", "PRESETS", "block_class", "build_model", "count_params", "evaluate",
           "gpt2_config", "load_model", "load_tokenizer", "save_tokenizer", "token_losses",
           "tokenizer_hash", "train_tokenizer"]
