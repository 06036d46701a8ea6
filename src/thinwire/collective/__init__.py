"""Collective training on torch.distributed (gloo on CPU, NCCL on GPUs): DDP and FSDP
communication hooks built from the codec library (one communicator per path, `communicators/`),
and the trainer of the LM task in `thinwire.tasks.lm`
(`python -m thinwire.collective.train_lm`, under torchrun or as a single process).
"""

from .fsdp import CompressedReduceScatter, fsdp1_hook, register_fsdp1_hook, register_fsdp2
from .hooks import comm_hook, register_ddp_hook
from .state import CommHookState

__all__ = ["CommHookState", "CompressedReduceScatter", "comm_hook", "fsdp1_hook",
           "register_ddp_hook", "register_fsdp1_hook", "register_fsdp2"]
