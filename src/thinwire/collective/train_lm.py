"""Train the GPT-2 LM on torch.distributed with a compression hook; one results.jsonl row.

    torchrun --standalone --nproc_per_node=2 -m thinwire.collective.train_lm \\
        --data input.txt --out runs/lm --comm-compress 'topk(ratio=0.01)+int8' --error-feedback
    python -m thinwire.collective.train_lm --data input.txt --model tiny --max-steps 20

Every rank trains on its own batches; rank 0 writes TensorBoard scalars, the row and the
checkpoint (<out>/checkpoints/<run>/: model.safetensors, config, tokenizer, hook states).
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ThinwireError, have
from ..tasks.lm import (build_model, count_params, evaluate, gpt2_config, load_tokenizer,
                        save_tokenizer, train_tokenizer)
from ..tasks.lm import text as data_mod
from .comm import diag_summary
from .metrics import RunMetrics, comm_fields, mem_peak_gb
from .observe import RankEvents, observed
from .options import parse_args
from .runtime import Dist, clip_and_check, init_distributed, save_checkpoint, wrap_model


def run_name(args: Any, world: int) -> str:
    if args.run_name:
        return args.run_name
    spec = args.comm_compress + (json.dumps(args.comm_config, sort_keys=True)
                                 if args.comm_config else "")
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", spec).strip("_")
    parts = [slug, "ef" if args.error_feedback else "",
             f"H{args.outer_steps}" if args.outer_steps else "",
             f"fsdp{args.fsdp_version}" if args.fsdp else "", f"ws{world}", f"s{args.seed}"]
    return "-".join(p for p in parts if p)


def get_tokenizer(args: Any, ctx: Dist) -> Any:
    if args.tokenizer is not None:
        return load_tokenizer(args.tokenizer)
    folder = Path(args.out) / f"tokenizer-{Path(args.data).stem}-v{args.vocab_size}"
    if ctx.rank == 0 and not (folder / "tokenizer.json").exists():
        save_tokenizer(train_tokenizer(data_mod.iter_documents(args.data), args.vocab_size),
                       folder)
    while not (folder / "tokenizer.json").exists():  # other ranks: poll, no collective
        time.sleep(0.2)
    if ctx.world > 1:
        dist.barrier()
    return load_tokenizer(folder)


def lr_lambda(args: Any):
    def factor(step: int) -> float:
        if step < args.lr_warmup:
            return (step + 1) / args.lr_warmup
        progress = (step - args.lr_warmup) / max(1, args.max_steps - args.lr_warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def validation(model: torch.nn.Module, blocks: torch.Tensor, args: Any,
               ctx: Dist) -> tuple[float, float]:
    """(loss, ppl) on the held-out blocks, split across the ranks."""
    score = evaluate(model, blocks, args.batch_size, device=ctx.device, rank=ctx.rank,
                     world=ctx.world, max_batches=args.eval_batches)
    return score.loss, score.ppl


def train(args: Any, ctx: Dist) -> dict[str, Any] | None:
    """The run, with every rank's events and monitor (and rank 0's dashboard) around it."""
    name = run_name(args, ctx.world)
    with observed(Path(args.out) / "logs" / name, name, ctx, args.monitor_every,
                  args.max_steps, args.dashboard) as events:
        row = train_observed(args, ctx, events)
        events.end(row)
    return row


def train_observed(args: Any, ctx: Dist, events: RankEvents) -> dict[str, Any] | None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(args.out)
    name = run_name(args, ctx.world)
    tok = get_tokenizer(args, ctx)
    tok.model_max_length = 10**9
    folder = data_mod.prepare_cache(args.data, tok, args.max_length,
                                    args.cache_dir or out / "cache", ctx.rank, ctx.world)
    train_blocks, val_blocks = data_mod.split_blocks(data_mod.load_blocks(folder),
                                                     args.val_fraction)
    config = gpt2_config(args.model, len(tok), args.max_length, tok.eos_token_id)
    raw = build_model(config, args.seed)
    n_params = count_params(raw)
    raw_bytes_per_step = sum(p.numel() * p.element_size() for p in raw.parameters())
    model, state = wrap_model(raw, args, ctx)
    outer = None
    if args.outer_steps:
        from .outer import OuterSync

        outer = OuterSync(model, state, args.outer_steps, args.outer_lr, args.outer_momentum,
                          bucket_cap_mb=args.bucket_cap_mb)
        if ctx.rank == 0 and (hint := outer_hint(args)):
            print(hint, flush=True)
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                              weight_decay=args.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args))
    logs = out / "logs" / name
    writer = None
    if ctx.rank == 0 and not have("tensorboard"):
        print('tensorboard: skipped (pip install "thinwire[tensorboard]")', flush=True)
    elif ctx.rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(logs / "tensorboard"))
    profiler = None
    if args.profile:
        from .profile import StepProfiler

        profiler = StepProfiler(logs / "profiler", ctx.rank, args.profile_steps,
                                skip=max(args.warmup_steps, args.start_iter + 1))
        profiler.__enter__()
    metrics = RunMetrics(args.warmup_steps)
    stream = data_mod.batches(train_blocks, args.batch_size, ctx.rank, ctx.world, args.seed)
    time_to_target, eval_due = None, False
    model.train()
    for step in range(args.max_steps):
        diag = bool(state and not outer and args.grad_error_every
                    and step >= args.start_iter and step % args.grad_error_every == 0)
        if state is not None:
            state.diagnose = diag
        t0 = time.perf_counter()
        ids = next(stream).to(ctx.device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        ok = clip_and_check(model, args)
        if ok:
            opt.step()
        else:
            metrics.nan_steps += 1
        opt.zero_grad(set_to_none=True)
        sched.step()
        synced = outer is None
        if outer is not None and outer.due(step, args.max_steps - 1):
            outer.sync()
            synced = True
        loss_value = float(loss.detach())
        seconds = time.perf_counter() - t0
        comm = state.stats.end_step() if state is not None else None
        metrics.record(step, seconds, loss_value, comm, excluded=diag)
        if profiler is not None:
            profiler.step()
        events.step(step, loss_value, seconds, sched.get_last_lr()[0], comm)
        if writer is not None:
            log_step(writer, step, loss_value, seconds, sched.get_last_lr()[0], comm, state,
                     args)
        eval_due = eval_due or bool(args.eval_every and (step + 1) % args.eval_every == 0)
        if eval_due and synced:  # with local steps: the global model, after its sync
            eval_due = False
            vl, vp = validation(model, val_blocks, args, ctx)
            if writer is not None:
                writer.add_scalar("val/loss", vl, step)
                writer.add_scalar("val/ppl", vp, step)
            if time_to_target is None and args.target_ppl and vp <= args.target_ppl:
                time_to_target = metrics.train_time_s
    if profiler is not None:
        profiler.__exit__(None, None, None)
        if ctx.rank == 0 and profiler.text:
            print(profiler.text, flush=True)
    val_loss, val_ppl = validation(model, val_blocks, args, ctx)
    ddp_ms = ddp_comm_ms(model)
    row = build_row(args, ctx, name, metrics, state, n_params, raw_bytes_per_step, val_loss,
                    val_ppl, time_to_target, ddp_ms, outer)
    if not args.no_save:
        save_checkpoint(model, raw, tok, out / "checkpoints" / name, args, ctx, state)
        if outer is not None:
            torch.save(outer.state_dict(), out / "checkpoints" / name /
                       f"outer_state_rank{ctx.rank}.pt")
    if writer is not None:
        writer.add_scalar("val/loss", val_loss, args.max_steps)
        writer.add_scalar("val/ppl", val_ppl, args.max_steps)
        writer.close()
    if ctx.rank == 0:
        from ..obs.results import append_row

        append_row(out / "results.jsonl", row)
        print(json.dumps(row), flush=True)
        return row
    return None


def log_step(writer: Any, step: int, loss: float, seconds: float, lr: float,
             comm: dict | None, state: Any, args: Any) -> None:
    writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("time/step_ms", 1000 * seconds, step)
    if comm:
        writer.add_scalar("comm/time_ms", 1000 * comm.get("comm_s", 0.0), step)
        writer.add_scalar("comm/bytes_compressed", comm.get("bytes_compressed", 0.0), step)
        rel, cos = diag_summary(comm)
        if rel is not None:
            writer.add_scalar("grad/rel_error", rel, step)
            writer.add_scalar("grad/cos_sim", cos, step)
    if state is not None and args.grad_error_every and step % args.grad_error_every == 0:
        writer.add_scalar("ef/residual_norm", state.residual_norm(), step)


def ddp_comm_ms(model: Any) -> float | None:
    """DDP's reducer estimate of backward comm time per iteration (sampled by DDP)."""
    try:
        value = model._get_ddp_logging_data().get("avg_backward_comm_time")
    except (AttributeError, RuntimeError):
        return None
    return value / 1e6 if value else None


def build_row(args: Any, ctx: Dist, name: str, metrics: RunMetrics, state: Any, n_params: int,
              raw_bytes_per_step: int, val_loss: float, val_ppl: float,
              time_to_target: float | None, ddp_ms: float | None,
              outer: Any = None) -> dict[str, Any]:
    timing = metrics.timing()
    step_ms_total = timing["step_time_ms_mean"] * timing["measured_steps"]
    comm = comm_fields(metrics, step_ms_total, raw_bytes_per_step, ddp_ms,
                       args.start_iter if state is not None and outer is None else 0)
    if outer is not None:
        comm = outer_fields(comm, raw_bytes_per_step * len(metrics.steps), outer)
    c = metrics.comm()["all"]
    residual_sq = state.residual_norm() ** 2 if state is not None else 0.0
    shared = torch.tensor([metrics.train_loss(), residual_sq, c.get("diag_err_sq", 0.0),
                           c.get("diag_ref_sq", 0.0), c.get("diag_dot", 0.0),
                           c.get("diag_out_sq", 0.0)], dtype=torch.float64, device=ctx.device)
    peak = torch.tensor([mem_peak_gb()], dtype=torch.float64, device=ctx.device)
    if ctx.world > 1:
        dist.all_reduce(shared)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    train_loss, residual_sq = float(shared[0]) / ctx.world, float(shared[1]) / ctx.world
    scale = 1.0 if (state is not None and state.stats.sharded) else ctx.world
    diag = {"diag_samples": c.get("diag_samples", 0), "diag_err_sq": float(shared[2]) / scale,
            "diag_ref_sq": float(shared[3]) / scale, "diag_dot": float(shared[4]) / scale,
            "diag_out_sq": float(shared[5]) / scale}
    rel, cos = diag_summary(diag)
    tokens = ctx.world * args.batch_size * args.max_length
    spec = state.spec if state is not None else args.comm_compress
    cuda = torch.cuda.is_available() and ctx.device.type == "cuda"
    return {
        "run_name": name, "world_size": ctx.world, "model": args.model,
        "model_params": n_params, "dataset": Path(args.data).name,
        "max_length": args.max_length, "batch_size": args.batch_size,
        "compress_method": args.comm_compress,
        "compress_config": {"spec": spec, "comm_config": args.comm_config,
                            "error_feedback": args.error_feedback,
                            "start_iter": args.start_iter,
                            "min_compression_rate": args.min_compression_rate,
                            "int8_mode": args.int8_mode,
                            "path": state.path if state is not None else "ddp-default",
                            "fsdp": args.fsdp_version if args.fsdp else 0,
                            **({"outer_steps": args.outer_steps, "outer_lr": args.outer_lr,
                                "outer_momentum": args.outer_momentum,
                                "outer_nesterov": args.outer_momentum > 0,
                                "inner_optimizer": args.optimizer} if outer else {})},
        "seed": args.seed, "steps": args.max_steps, "warmup_steps": args.warmup_steps,
        "optimizer": args.optimizer, "lr": args.lr,
        **timing,
        "tokens_per_s": tokens / (timing["step_time_ms_mean"] / 1000),
        **comm,
        "train_loss": train_loss, "val_loss": val_loss, "val_ppl": val_ppl,
        "residual_norm": math.sqrt(residual_sq) if state is not None else None,
        "grad_rel_error": rel, "grad_cos_sim": cos,
        "grad_diag_samples": int(diag["diag_samples"]),
        "mem_peak": float(peak[0]),
        "mem_peak_alloc_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "mem_peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "time_to_target_ppl_s": time_to_target, "target_ppl": args.target_ppl,
        "train_time_s": metrics.train_time_s, "nan_steps": metrics.nan_steps,
        "backend": ctx.backend, "device": str(ctx.device), "torch": torch.__version__,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def outer_hint(args: Any) -> str | None:
    """One line when few outer steps meet outer momentum: measured to overshoot (bench/
    RESULTS.md: 8 outer steps in 200, Nesterov 0.9 +34% PPL against +8% for plain averaging)."""
    syncs = math.ceil(args.max_steps / args.outer_steps)
    if args.outer_momentum > 0 and syncs < 50:
        return (f"hint: {syncs} outer steps with outer momentum {args.outer_momentum:g}: in "
                "short runs momentum overshoots; --outer-lr 1.0 --outer-momentum 0 (plain "
                "averaging) did better in bench/RESULTS.md")
    return None


def outer_fields(comm: dict[str, Any], ddp_bytes: int, outer: Any) -> dict[str, Any]:
    """With local steps the baseline is what per-step DDP would send over the same steps:
    compression_ratio compares against it; compression_ratio_sync is the codec's own ratio
    on one pseudo-gradient."""
    sync_raw, sent = comm["bytes_raw_total"], comm["bytes_compressed_total"]
    ratio = ddp_bytes / sent if sent else None
    return {**comm, "bytes_raw_total": ddp_bytes, "bytes_raw_sync_total": sync_raw,
            "compression_ratio": ratio, "compression_ratio_total": ratio,
            "compression_ratio_steady": ratio,
            "compression_ratio_sync": sync_raw / sent if sent else None,
            "outer_syncs": outer.syncs, "outer_skipped": outer.skipped}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        ctx = init_distributed(args.backend, args.threads)
    except ThinwireError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        train(args, ctx)
        return 0
    except ThinwireError as exc:
        print(f"error (rank {ctx.rank}): {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
