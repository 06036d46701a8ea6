"""Bytes of one federated-experts upload for Qwen2-0.5B-Instruct's architecture, against a
push of the whole model in fp32 (what seed 003 sent), for a few codecs and LoRA targets.

    PYTHONPATH=src python bench/experts_upload_size.py

The model is built on the meta device from Qwen2-0.5B's published config (no download, no
memory): only module shapes matter. The upload is the worker's real message: B matrices
(FFA-LoRA, rank 8), encoded by the codec and serialized as a protobuf `Update`.
"""

from __future__ import annotations

import torch

from thinwire.codecs import Encoder, make_codec
from thinwire.exchange import Sender
from thinwire.policy import make_policy
from thinwire.tasks.lm.tuning import QWEN2_ATTENTION, QWEN2_MLP, FFALora
from thinwire.wire import serialize_update

QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                 num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 tie_word_embeddings=True, max_position_embeddings=32768)


def upload_bytes(model: torch.nn.Module, targets: tuple[str, ...], codec: str) -> int:
    layout = FFALora(8, 16.0, targets).layout(model)
    gen = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(s, generator=gen) * 1e-3 for n, s in layout.items()}
    sender = Sender("w", Encoder(make_codec(codec, error_feedback=True)), make_policy("always"))
    proposal = sender.propose(delta, 1, 1.0, role="adapter")
    return len(serialize_update(sender.message(proposal, kind="delta", seq=1)))


def main() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_05B))
    full = 4 * sum(p.numel() for p in model.parameters())
    print(f"Qwen2-0.5B: {full / 4 / 1e6:.1f}M parameters, {full / 1e6:,.0f} MB in fp32")
    print("| targets | codec | bytes per upload | x smaller than fp32 model |")
    print("|---|---|---|---|")
    for name, targets in (("attention", QWEN2_ATTENTION), ("all linear", QWEN2_ATTENTION +
                                                           QWEN2_MLP)):
        for codec in ("none", "int8", "topk(ratio=0.1)+int8"):
            size = upload_bytes(model, targets, codec)
            print(f"| {name} | {codec} | {size:,} | {full / size:,.0f} |")


if __name__ == "__main__":
    main()
