"""`thinwire validate --model-dir D --data P`: mean token loss and perplexity of a checkpoint.

The text is cut into blocks of max_length tokens exactly as for training (same document
splitting, tokenizer and block cache code); the loss is the token-weighted mean next-token NLL
over all blocks (`--split val`: only the held-out tail that train_lm validated on), and
ppl = exp(avg_loss): `thinwire.tasks.lm.evaluate`, the function train_lm validates with.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ThinwireError
from ..tasks.lm import evaluate, load_model, load_tokenizer
from ..tasks.lm import text as data_mod


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinwire validate", description=__doc__)
    p.add_argument("--model-dir", "--model_dir", dest="model_dir", type=Path, required=True)
    p.add_argument("--data", "--data-path", "--data_path", dest="data", type=Path, required=True)
    p.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=128)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    p.add_argument("--max-batches", type=int, default=0, help="0 = every block")
    p.add_argument("--split", choices=["all", "val"], default="all")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--tokenizer", type=Path, default=None, help="default: the checkpoint's")
    p.add_argument("--cache-dir", type=Path, default=None, help="reuse a token cache folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


@torch.no_grad()
def validate(model_dir: Path, data: Path, max_length: int = 128, batch_size: int = 8,
             max_batches: int = 0, split: str = "all", val_fraction: float = 0.05,
             tokenizer: Path | None = None, cache_dir: Path | None = None) -> dict[str, Any]:
    model = load_model(model_dir)
    tok = load_tokenizer(tokenizer or model_dir)
    tok.model_max_length = 10**9
    with tempfile.TemporaryDirectory() as tmp:
        folder = data_mod.build_cache(data, tok, max_length, cache_dir or Path(tmp))
        blocks = data_mod.load_blocks(folder)
    if split == "val":
        blocks = data_mod.split_blocks(blocks, val_fraction)[1]
    if max_batches:
        blocks = blocks[: max_batches * batch_size]
    score = evaluate(model, blocks, batch_size)
    return {"avg_loss": score.loss, "ppl": score.ppl, "tokens": score.tokens,
            "blocks": int(blocks.size(0)), "model_dir": str(model_dir), "data": str(data)}


def validate_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = validate(args.model_dir, args.data, args.max_length, args.batch_size,
                          args.max_batches, args.split, args.val_fraction, args.tokenizer,
                          args.cache_dir)
    except ThinwireError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"avg_loss: {result['avg_loss']:.6f}")
        print(f"ppl: {result['ppl']:.4f}")
        print(f"({result['tokens']} predicted tokens in {result['blocks']} blocks of "
              f"{args.max_length})")
    return 0


if __name__ == "__main__":
    sys.exit(validate_main())
