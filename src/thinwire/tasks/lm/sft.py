"""Supervised fine-tuning data: JSONL rows `{prompt, reference_code}` as chat examples whose
loss counts only the response tokens.

Rows are validated as they are read, and a bad row names its file and line, because a
worker that trains for an hour should fail in its first second on a typo at line 4,000.
With a chat template the prompt is the user turn and the code the assistant turn (the
template's own end-of-turn token ends it); without one, `prompt\\n` + code + EOS.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import DataError

FIELDS = ("prompt", "reference_code")
IGNORE = -100  # label of a token the loss leaves out (prompt and padding)


@dataclass(frozen=True)
class Example:
    ids: list[int]
    labels: list[int]   # IGNORE on prompt tokens


def read_rows(path: Path | str, limit: int | None = None) -> list[dict[str, Any]]:
    """Every row of a JSONL file (the first `limit`), each checked for its two text fields."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset {path} does not exist (JSONL with 'prompt' and "
                        "'reference_code' per line)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            rows.append(check_row(line, path, number))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise DataError(f"dataset {path} holds no rows")
    return rows


def check_row(line: str, path: Path, number: int) -> dict[str, Any]:
    where = f"{path}:{number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not a JSON object ({exc.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with {FIELDS}, got "
                        f"{type(row).__name__}")
    for key in FIELDS:
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            problem = "is missing" if key not in row else "is not a non-empty string"
            raise DataError(f"{where}: field '{key}' {problem} (each row needs 'prompt' "
                            "and 'reference_code')")
    return row


def chat_texts(tok: Any, prompt: str, response: str) -> tuple[str, str]:
    """(prompt part, response part) as text; the response part ends the turn."""
    if getattr(tok, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        head = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": response}],
                                       tokenize=False)
        if not full.startswith(head):
            raise DataError("the tokenizer's chat template renders the prompt differently "
                            "with and without the answer; cannot mask the prompt tokens")
        return head, full[len(head):]
    return f"{prompt}\n", f"{response}{tok.eos_token or ''}"


def prompt_text(tok: Any, prompt: str) -> str:
    """What a generator is given: the prompt part of `chat_texts`."""
    return chat_texts(tok, prompt, "x")[0]


def encode(tok: Any, prompt: str, response: str, max_length: int,
           with_prompt: bool = False) -> Example | None:
    """Token ids and labels of one row, cut to `max_length`; None if no response is left.
    `with_prompt` labels the prompt's tokens too, so the model also learns its prompts
    (what loss routing scores); otherwise only the response counts."""
    head, tail = chat_texts(tok, prompt, response)
    a = tok(head, add_special_tokens=False)["input_ids"]
    b = tok(tail, add_special_tokens=False)["input_ids"]
    ids = (a + b)[:max_length]
    labels = ([IGNORE] * len(a) + b)[:max_length]
    if all(v == IGNORE for v in labels[1:]):
        return None
    return Example(ids, list(ids) if with_prompt else labels)


def encode_rows(tok: Any, rows: Sequence[dict[str, Any]], max_length: int,
                with_prompt: bool = False) -> list[Example]:
    out = [encode(tok, r["prompt"], r["reference_code"], max_length, with_prompt)
           for r in rows]
    kept = [e for e in out if e is not None]
    if not kept:
        raise DataError(f"no row keeps a response token within max_length={max_length}; "
                        "raise --max-length")
    return kept


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (padding ignored by the loss)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        labels[i, :len(e.labels)] = torch.tensor(e.labels)
        mask[i, :len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(examples: Sequence[Example], batch_size: int, pad_id: int,
            seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches, a new seeded permutation each epoch."""
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(examples), generator=gen).tolist()
        for start in range(0, len(order), batch_size):
            yield collate([examples[i] for i in order[start:start + batch_size]], pad_id)
        epoch += 1


def response_loss_sums(model: torch.nn.Module, batch: dict[str, torch.Tensor]
                       ) -> tuple[float, int]:
    """(sum of next-token NLL over response tokens, their count) of one batch."""
    logits = model(input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                             target.reshape(-1), ignore_index=IGNORE,
                                             reduction="sum")
    return float(loss), int((target != IGNORE).sum())


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, examples: Sequence[Example], pad_id: int,
                 batch_size: int = 16) -> tuple[float, float]:
    """(mean response-token loss, perplexity) of `model` on `examples`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        s, n = response_loss_sums(model, collate(examples[start:start + batch_size], pad_id))
        total, count = total + s, count + n
    model.train(was_training)
    loss = total / max(count, 1)
    return loss, math.exp(min(loss, 700.0))
