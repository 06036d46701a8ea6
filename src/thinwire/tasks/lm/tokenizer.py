"""Byte-level BPE trained locally with `tokenizers` (no download), or a given tokenizer.

The trained tokenizer is saved in Hugging Face format (tokenizer.json + config), so checkpoints
carry it and `transformers` loads it back. `<|endoftext|>` is the end-of-document, padding and
BOS token, as in GPT-2.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Iterable

from ...errors import ConfigError

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A GPT-2 style byte-level BPE over `texts` (a transformers fast tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257:
        raise ConfigError(f"vocab_size {vocab_size} is too small for byte-level BPE (>= 257)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   unk_token=EOS, pad_token=EOS)


def load_tokenizer(path: Path | str) -> Any:
    """A tokenizer folder (tokenizer.json or GPT-2's vocab.json + merges.txt) or a
    tokenizer.json file."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if path.is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    elif path.is_dir():
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load a tokenizer from {path}: {exc}") from None
    else:
        raise ConfigError(f"tokenizer {path} does not exist")
    if tok.eos_token is None:
        tok.eos_token = EOS if EOS in tok.get_vocab() else tok.convert_ids_to_tokens(0)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_hash(tok: Any) -> str:
    """Identity of a tokenizer's behaviour (its serialized backend), for cache keys."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def save_tokenizer(tok: Any, folder: Path) -> None:
    """Write atomically (temp folder + rename) so ranks polling for it never see half."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
