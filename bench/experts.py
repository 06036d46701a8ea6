"""Federated-experts benchmark: does each expert beat the base on its specialty, does the
merged gateway beat every single expert across all three, how close is it to one model
trained on all the data, how small are the uploads, and how well does routing work?

    PYTHONPATH=src python bench/experts.py --out runs/bench-experts          # short, ~17 min
    PYTHONPATH=src python bench/experts.py --size medium --vocab 4096 --max-length 256 \\
        --batch-size 16 --pretrain-s 1800 --worker-s 1800 --heldout 0 --out runs/full

A Qwen2-architecture model from a config (sizes in tasks/lm/qwen.py) with a BPE tokenizer
trained on the training splits; its base is first trained (all weights) on the three
specialties' training splits together. Splits: MBPP's usual one for python (train 511-974,
test 11-510), Spider train/dev for sql, a fixed 10% (every tenth row) of docs. Each
specialty's worker then gets the same wall-clock budget through the runtime's own worker
loop and coordinator state machine (in process: `LocalLink`, the same serialized bodies as
over HTTP); the all-data model gets the three budgets together with the same FFA-LoRA.

Routing is measured both ways on the held-out prompts: nearest centroid of base embeddings,
and lowest prompt loss under each expert (which needs experts trained on their prompts too:
`--prompt-loss`, the default here; `--no-prompt-loss` trains on the answers only, as the
runs in bench/RESULTS.md before loss routing did).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from thinwire.experts.config import ROUTING, load_config
from thinwire.experts.core import ExpertsCoordinator
from thinwire.experts.gateway import Gateway
from thinwire.experts.link import LocalLink
from thinwire.experts.trainer import Trainer
from thinwire.experts.worker import build_worker
from thinwire.tasks.lm.embed import centroid
from thinwire.tasks.lm.merge import apply
from thinwire.tasks.lm.pretrained import load_base
from thinwire.tasks.lm.qwen import build_qwen2, chat_tokenizer, qwen2_config, save_base
from thinwire.tasks.lm.sft import encode_rows, heldout_loss, read_rows
from thinwire.tasks.lm.tuning import (QWEN2_ATTENTION, QWEN2_MLP, FFALora, FullTuning,
                                      specialty_seed)
from thinwire.tasks.lm.weights import model_from_weights
from thinwire.wire.control import Register

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruct"
SPECIALTIES = ("python_expert", "sql_expert", "docs_expert")
START = time.monotonic()


def log(line: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {line}", flush=True)


def splits(data: Path) -> tuple[dict[str, list], dict[str, list]]:
    python = read_rows(data / "python.jsonl")
    sql = read_rows(data / "sql.jsonl")
    docs = read_rows(data / "docs.jsonl")
    train = {"python_expert": [r for r in python if 511 <= r["task_id"] <= 974],
             "sql_expert": [r for r in sql if r["split"] == "train"],
             "docs_expert": [r for i, r in enumerate(docs) if i % 10]}
    held = {"python_expert": [r for r in python if 11 <= r["task_id"] <= 510],
            "sql_expert": [r for r in sql if r["split"] == "dev"],
            "docs_expert": [r for i, r in enumerate(docs) if not i % 10]}
    return train, held


def make_base(args: argparse.Namespace, train: dict[str, list]) -> Path:
    """Tokenizer + Qwen2 from a config, trained briefly on all three training splits."""
    rows = [r for spec in SPECIALTIES for r in train[spec]]
    gen = torch.Generator().manual_seed(0)
    sample = [rows[i] for i in torch.randperm(len(rows), generator=gen)[:4000].tolist()]
    tok = chat_tokenizer((f"{r['prompt']}\n{r['reference_code']}" for r in sample), args.vocab)
    model = build_qwen2(qwen2_config(args.size, len(tok), 1024))
    log(f"base: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"vocab {len(tok)}; pretraining {args.pretrain_s:.0f}s on {len(rows)} rows")
    trainer = Trainer(model, FullTuning(), encode_rows(tok, rows, args.max_length),
                      tok.pad_token_id, args.pretrain_lr, args.batch_size)
    done = trainer.train_for(args.pretrain_s)
    log(f"base pretrained: {trainer.steps} steps, last loss {done.loss:.3f}")
    for p in model.parameters():
        p.requires_grad_(False)
    return save_base(args.out / "base", model, tok)


def train_experts(args: argparse.Namespace, base_dir: Path, train: dict[str, list],
                  merge: str) -> ExpertsCoordinator:
    cfg = load_config(None, {"base_model": str(base_dir), "codec": args.codec,
                             "lora_rank": args.rank, "lora_targets": args.targets,
                             "merge": merge, "run_name": "bench",
                             "prompt_loss": args.prompt_loss})
    shutil.rmtree(args.out / "state", ignore_errors=True)
    co = ExpertsCoordinator(cfg, load_base(base_dir), args.out / "state")
    for spec in SPECIALTIES:
        base, wid = load_base(base_dir), f"{spec}-1"
        link = LocalLink(co, wid)
        prompts = [r["prompt"] for r in train[spec]]
        conf = link.register(Register(wid, "bench", spec, base=base.fingerprint,
                                      count=len(prompts),
                                      centroid=centroid(base.model, base.tokenizer,
                                                        prompts).tolist()))["config"]
        wargs = argparse.Namespace(max_length=args.max_length, lr=args.lr,
                                   batch_size=args.batch_size, seed=0, speed_factor=1.0,
                                   worker_id=wid, out=None, specialty=spec)
        worker = build_worker(link, conf, base, train[spec], wargs, None)
        worker.run(args.worker_s, args.sync_s, 0.0)
        log(f"{spec}: {worker.trainer.steps} steps, {worker.sent} uploads, "
            f"expert v{co.experts[spec].version}")
    return co


def all_data_model(args: argparse.Namespace, base_dir: Path, train: dict[str, list]):
    base = load_base(base_dir)
    rows = [r for spec in SPECIALTIES for r in train[spec]]
    tuning = FFALora(args.rank, 16.0, tuple(args.targets), specialty_seed(0, "all"))
    examples = encode_rows(base.tokenizer, rows, args.max_length, args.prompt_loss)
    trainer = Trainer(base.model, tuning, examples, base.tokenizer.pad_token_id, args.lr,
                      args.batch_size)
    trainer.train_for(len(SPECIALTIES) * args.worker_s)
    log(f"all-data model: {trainer.steps} steps in {len(SPECIALTIES) * args.worker_s:.0f}s")
    return trainer.model.eval()


def gateway_model(co: ExpertsCoordinator, **change) -> torch.nn.Module:
    gateway = Gateway(co.cfg.model_copy(update=change), co.base_state, co.base.model)
    gateway.rebuild(co.experts, bump=False)
    return model_from_weights(co.base.model.config, gateway.weights_state())


def evaluate(models: dict, tok, held: dict[str, list], max_length: int) -> dict:
    encoded = {s: encode_rows(tok, rows, max_length) for s, rows in held.items()}
    return {name: {s: heldout_loss(m, encoded[s], tok.pad_token_id) for s in SPECIALTIES}
            for name, m in models.items()}


def routing(co: ExpertsCoordinator, held: dict[str, list]) -> dict[str, float]:
    """Accuracy of each routing method on the held-out prompts: `routing_accuracy` for the
    coordinator's default method, `routing_accuracy_<method>` for each."""
    total = sum(len(rows) for rows in held.values())
    out = {}
    for method in ROUTING:
        start = time.monotonic()
        hits = sum(co.route(r["prompt"], method)["expert"] == s
                   for s, rows in held.items() for r in rows)
        out[f"routing_accuracy_{method}"] = hits / total
        log(f"routing by {method}: {hits}/{total} in {time.monotonic() - start:.1f}s")
    return {"routing_accuracy": out[f"routing_accuracy_{co.cfg.routing}"], **out}


def table(scores: dict) -> list[str]:
    def cell(loss_ppl: tuple[float, float]) -> str:
        return f"{loss_ppl[0]:.3f} / {loss_ppl[1]:.2f}"

    gateways = [n for n in scores if n.startswith("gateway")]
    head = ["specialty", "base", "its expert", "other experts (mean)", *gateways, "all data"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in SPECIALTIES:
        others = [scores[o][s] for o in SPECIALTIES if o != s]
        other = (sum(v[0] for v in others) / 2, sum(v[1] for v in others) / 2)
        row = [s, cell(scores["base"][s]), cell(scores[s][s]), cell(other),
               *(cell(scores[g][s]) for g in gateways), cell(scores["all data"][s])]
        lines.append("| " + " | ".join(row) + " |")
    means = {n: sum(v[1] for v in scores[n].values()) / 3 for n in scores}
    lines.append("| mean PPL | " + " | ".join(
        [f"{means['base']:.2f}", " ".join(f"{s.split('_')[0]} {means[s]:.2f}"
                                          for s in SPECIALTIES), "-",
         *(f"{means[g]:.2f}" for g in gateways), f"{means['all data']:.2f}"]) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench-experts"))
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--size", default="mini", help="tasks/lm/qwen.py SIZES")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--pretrain-s", type=float, default=150.0)
    p.add_argument("--pretrain-lr", type=float, default=2e-3)
    p.add_argument("--worker-s", type=float, default=120.0, help="budget per worker")
    p.add_argument("--sync-s", type=float, default=10.0)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", default=",".join(QWEN2_ATTENTION + QWEN2_MLP))
    p.add_argument("--codec", default="int8")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--prompt-loss", action=argparse.BooleanOptionalAction, default=True,
                   help="workers train on prompt tokens too (loss routing needs it)")
    p.add_argument("--heldout", type=int, default=200, help="rows per specialty; 0 = all")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    args.targets = args.targets.split(",")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    train, held = splits(args.data)
    if args.heldout:
        held = {s: rows[:args.heldout] for s, rows in held.items()}
    base_dir = make_base(args, train)
    co = train_experts(args, base_dir, train, "linear")
    full = all_data_model(args, base_dir, train)
    tok = co.base.tokenizer
    models = {"base": co.base.model, "all data": full,
              **{s: model_from_weights(co.base.model.config,
                                       apply(co.base_state, co.gateway.expert_delta(e)))
                 for s, e in co.experts.items()},
              "gateway linear (mean)": gateway_model(co, merge="linear"),
              "gateway linear (sum)": gateway_model(co, merge="linear",
                                                    merge_weights="uniform", merge_scale=3.0),
              "gateway ties": gateway_model(co, merge="ties")}
    scores = evaluate(models, tok, held, args.max_length)
    status = co.status()
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "scores": scores,
              **routing(co, held),
              "uploads": status["uploads"], "bytes_up": status["bytes_up"],
              "bytes_per_upload": status["bytes_per_upload"],
              "full_model_bytes": status["full_model_bytes"],
              "upload_ratio": status["upload_ratio"],
              "heldout_rows": {s: len(r) for s, r in held.items()}}
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    for line in table(scores):
        print(line)
    print(f"uploads: {result['uploads']} x {result['bytes_per_upload']:,.0f} bytes = "
          f"{result['bytes_up']:,} bytes; full fp32 pushes would be "
          f"{result['uploads'] * result['full_model_bytes']:,} "
          f"({result['upload_ratio']:,.0f}x more)")
    by = ", ".join(f"{m} {100 * result[f'routing_accuracy_{m}']:.1f}%" for m in ROUTING)
    print(f"routing accuracy: {100 * result['routing_accuracy']:.1f}% ({co.cfg.routing}, the "
          f"default; {by}) on {sum(result['heldout_rows'].values())} held-out prompts")
    co.close()


if __name__ == "__main__":
    main()
