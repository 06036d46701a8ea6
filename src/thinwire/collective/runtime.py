"""Process-group setup, model wrapping (DDP / FSDP1 / FSDP2 + hooks), checkpoints.

Without torchrun (no RANK in the environment) the process joins a gloo group of one on a free
127.0.0.1 port, so the same code path (hooks included) runs single-process.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .state import CommHookState


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    local_world: int
    device: torch.device
    backend: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(backend: str = "auto", threads: int = 0) -> Dist:
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(local_world, 1)))
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, local_world, device, backend)


def wrap_model(model: torch.nn.Module, args: Any, ctx: Dist
               ) -> tuple[torch.nn.Module, CommHookState | None]:
    """DDP or FSDP around `model`, with the compression hook unless --comm-compress none;
    with --outer-steps the bare model and the state its pseudo-gradient syncs use."""
    from .fsdp import register_fsdp1_hook, register_fsdp2
    from .hooks import register_ddp_hook
    from ..tasks.lm import block_class

    spec = args.comm_compress
    hooked = spec.strip() != "none" or args.comm_config or args.hook_baseline
    opts = {"error_feedback": args.error_feedback, "start_iter": args.start_iter,
            "min_compression_rate": args.min_compression_rate, "int8_mode": args.int8_mode}
    model = model.to(ctx.device)
    if getattr(args, "outer_steps", 0):  # DiLoCo: no wrapper, the sync owns the state
        return model, CommHookState(spec, args.comm_config, **{**opts, "start_iter": 0})
    if not args.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                  bucket_cap_mb=args.bucket_cap_mb)
        state = register_ddp_hook(ddp, spec, args.comm_config, **opts) if hooked else None
        return ddp, state
    if args.fsdp_version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        fsdp = FSDP(model, auto_wrap_policy=ModuleWrapPolicy({block_class()}),
                    device_id=ctx.device, use_orig_params=True)
        state = register_fsdp1_hook(fsdp, spec, args.comm_config, **opts) if hooked else None
        return fsdp, state
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if isinstance(module, block_class()):
            fully_shard(module)
    fully_shard(model)
    state = register_fsdp2(model, spec, args.comm_config, **opts) if hooked else None
    return model, state


def clip_and_check(model: torch.nn.Module, args: Any) -> bool:
    """Clip the gradient norm (if asked); False if it is not finite (skip the step)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if args.fsdp and args.fsdp_version == 1:
        norm = model.clip_grad_norm_(args.grad_clip or math.inf)
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip or math.inf)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return bool(torch.isfinite(torch.as_tensor(norm)).all())


def save_checkpoint(model: torch.nn.Module, raw: torch.nn.Module, tok: Any, folder: Path,
                    args: Any, ctx: Dist, state: CommHookState | None) -> None:
    """safetensors weights + config + tokenizer files (rank 0) and each rank's hook state."""
    folder = Path(folder)
    full = None
    if args.fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict)

        # cpu_offload on a CPU model segfaults FSDP1 (torch 2.13): only offload from GPUs
        offload = ctx.device.type != "cpu"
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=offload))
    if ctx.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        target = raw
        if full is not None:
            from transformers import GPT2LMHeadModel

            target = GPT2LMHeadModel(raw.config)
            target.load_state_dict(full, strict=False)
            target.tie_weights()
        target.save_pretrained(str(folder), safe_serialization=True)
        tok.save_pretrained(str(folder))
    if state is not None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state.state_dict(), folder / f"comm_state_rank{ctx.rank}.pt")
    if ctx.world > 1:
        dist.barrier()
