"""`thinwire generate --model-dir D [--prompt TEXT]`: sample a continuation (or a small REPL).

The model is a pre-trained-from-scratch LM (continuation, not chat): the prompt is continued
with temperature / nucleus (top-p) sampling; --temperature 0 is greedy. Without --prompt it
reads prompts from stdin, one per line, until EOF or 'exit'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import torch

from ..errors import ConfigError, ThinwireError
from ..tasks.lm import load_model, load_tokenizer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinwire generate", description=__doc__)
    p.add_argument("--model-dir", "--model_dir", dest="model_dir", type=Path, required=True)
    p.add_argument("--prompt", default=None, help="omit for an interactive prompt loop")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int,
                   default=64)
    p.add_argument("--seed", type=int, default=0)
    return p


@torch.no_grad()
def generate(model: Any, tok: Any, prompt: str, temperature: float = 0.8, top_p: float = 0.95,
             max_new_tokens: int = 64, seed: int = 0) -> str:
    if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
        raise ConfigError("need --temperature >= 0, 0 < --top-p <= 1, --max-new-tokens >= 1")
    torch.manual_seed(seed)
    ids = tok(prompt or tok.eos_token, return_tensors="pt").input_ids
    room = model.config.n_positions - max_new_tokens
    if room < 1:
        raise ConfigError(f"--max-new-tokens must be below the model's "
                          f"{model.config.n_positions} positions")
    ids = ids[:, -room:]
    sample = temperature > 0
    kwargs = {"temperature": temperature, "top_p": top_p} if sample else {}
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=sample,
                         max_new_tokens=max_new_tokens, pad_token_id=tok.eos_token_id, **kwargs)
    return tok.decode(out[0, ids.size(1):], skip_special_tokens=True)


def repl(model: Any, tok: Any, args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    for line in stdin:
        prompt = line.rstrip("\n")
        if prompt.strip() in ("exit", "quit"):
            break
        text = generate(model, tok, prompt, args.temperature, args.top_p, args.max_new_tokens,
                        args.seed)
        stdout.write(prompt + text + "\n> ")
        stdout.flush()


def generate_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = load_model(args.model_dir)
        tok = load_tokenizer(args.model_dir)
        if args.prompt is not None:
            print(args.prompt + generate(model, tok, args.prompt, args.temperature, args.top_p,
                                         args.max_new_tokens, args.seed))
        else:
            print("prompt (empty line: unconditional; exit or Ctrl-D to quit)\n> ", end="",
                  flush=True)
            repl(model, tok, args, sys.stdin, sys.stdout)
    except ThinwireError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(generate_main())
