"""What the coordinator reports: its status (experts, gateway, workers, bytes) and a run
record row (obs/record.py) each time an expert moves.

Upload sizes are set against the full model in fp32: the bytes a worker would push if it
sent its whole fine-tuned model each time, which is what the seed did.
"""

from __future__ import annotations

import time
from typing import Any

from ..obs.record import record


def upload_figures(co: Any) -> dict[str, Any]:
    totals = co.ledger.totals()
    sent = totals["sent"]
    per_push = totals["up_wire"] / sent if sent else None
    return {"full_model_bytes": co.full_bytes, "uploads": sent,
            "bytes_up": totals["up_wire"], "bytes_down": totals["down_wire"],
            "bytes_per_upload": per_push,
            "upload_ratio": co.full_bytes / per_push if per_push else None}


def status_view(co: Any) -> dict[str, Any]:
    return {
        "base": co.base.name, "fingerprint": co.fingerprint, "finetune": co.cfg.finetune,
        "codec": co.cfg.codec, "error_feedback": co.cfg.error_feedback,
        "routing": co.cfg.routing, "prompt_loss": co.cfg.prompt_loss,
        "experts": {n: e.info() for n, e in sorted(co.experts.items())},
        "gateway": co.gateway.info(),
        "workers": [{"id": w["id"], "specialty": w["specialty"], "state": w["state"],
                     "took_part": w.get("took_part", True), "sent": w["sent"],
                     "samples": w["samples"],
                     "last_seen": round(w["last_seen"], 3)} for w in co.workers.values()],
        **upload_figures(co), "uptime_s": round(time.time() - co.started, 3),
    }


def results_row(co: Any, specialty: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A results.jsonl row for expert `specialty` reaching the version in `entry`."""
    cfg = co.cfg
    common = {"run_name": cfg.name(), "task": f"sft:{specialty}", "model": co.base.name,
              "nodes": len(co.workers), "codec": cfg.codec, "codec_config": cfg.codec,
              "error_feedback": cfg.error_feedback, "policy": "timer", "seed": cfg.seed,
              "test_accuracy": None, "test_loss": None, "train_loss": entry["train_loss"]}
    figures = upload_figures(co)
    return record("experts", common, co.ledger.totals(), specialty=specialty,
                  expert_version=entry["version"], gateway_version=co.gateway.version,
                  merge=cfg.merge, reason=entry["reason"], contributors=entry["contributors"],
                  full_model_bytes=figures["full_model_bytes"],
                  bytes_per_upload=figures["bytes_per_upload"],
                  upload_ratio=figures["upload_ratio"])
