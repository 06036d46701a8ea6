"""`thinwire generate --coordinator-url URL --prompt TEXT`: answer with the right expert.

The coordinator routes the prompt unless --model names an expert or `gateway`: to the
expert whose training prompts it is closest to (`--route centroid`: the centroids of
mean-pooled base-model embeddings) or under which the prompt has the lowest loss (`--route
loss`); without --route, by the coordinator's `routing` key. The tool prints which model
answered and why, fetches its merged weights and the base's config and tokenizer, and
generates locally (greedy unless --temperature > 0), the prompt wrapped in the chat template
the experts were trained with.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

from ..errors import ConfigError
from ..tasks.lm.sft import prompt_text
from .client import CoordinatorClient
from .config import ROUTING


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinwire generate --coordinator-url", description=__doc__)
    p.add_argument("--coordinator-url", required=True)
    p.add_argument("--token", default=os.environ.get("THINWIRE_TOKEN"))
    p.add_argument("--prompt", required=True)
    p.add_argument("--model", default="auto",
                   help="auto (route to an expert), gateway, or an expert's name")
    p.add_argument("--route", choices=ROUTING, default=None,
                   help="how auto routes (default: the coordinator's routing key)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    return p


def choose(client: CoordinatorClient, prompt: str, model: str,
           method: str | None = None) -> tuple[str, str]:
    """(model to use, why)."""
    if model != "auto":
        return model, "asked for"
    route = client.post("/v1/route", {"prompt": prompt, "method": method})
    ranked = sorted(route["scores"].items(), key=lambda kv: kv[1])
    what = "distances" if route["method"] == "centroid" else "losses"
    scores = ", ".join(f"{n} {d:.3g}" for n, d in ranked)
    return route["expert"], f"routed by {route['method']} ({what}: {scores})"


@torch.no_grad()
def answer(model: torch.nn.Module, tok: Any, prompt: str, max_new_tokens: int,
           temperature: float, seed: int) -> str:
    if max_new_tokens < 1 or temperature < 0:
        raise ConfigError("need --max-new-tokens >= 1 and --temperature >= 0")
    torch.manual_seed(seed)
    ids = tok(prompt_text(tok, prompt), return_tensors="pt",
              add_special_tokens=False).input_ids
    sample = temperature > 0
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=sample,
                         max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id,
                         **({"temperature": temperature} if sample else {}))
    return tok.decode(out[0, ids.size(1):], skip_special_tokens=True)


def generate_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = CoordinatorClient(args.coordinator_url, args.token)
    try:
        which, why = choose(client, args.prompt, args.model, args.route)
        model, tok, version = client.model(which)
        print(f"model: {which} v{version} ({why})")
        print(answer(model, tok, args.prompt, args.max_new_tokens, args.temperature,
                     args.seed))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    from ..errors import run_main

    sys.exit(run_main(generate_main))
