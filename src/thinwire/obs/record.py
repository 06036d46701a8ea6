"""The run record: one results.jsonl row per run (or per evaluated round), the same common
keys in every runtime, and the one written definition of the compression ratios.

Compression ratios (all "dense fp32 bytes / bytes that crossed the wire"):
- `compression_ratio_up`: uplink. The numerator counts every upload *opportunity* (sent or
  skipped by the policy) at dense fp32 size, so it is the saving of codec and policy together.
- `compression_ratio_down`: downlink (the aggregator's broadcast or the model pulls).
- `compression_ratio_total`: both directions, (raw up + raw down) / (wire up + wire down);
  the headline figure.
- `compression_ratio`: kept as the uplink ratio for older readers of results.jsonl.
Control traffic (registration, skips, offers) is reported apart as `bytes_control`.
The collective runtime keeps the seed's field names (`bytes_raw`, `bytes_compressed`,
`compression_ratio` = all ranks' dense bytes / bytes sent, one direction).
"""

from __future__ import annotations

from typing import Any

COMMON_KEYS = ("run_name", "runtime", "task", "model", "nodes", "codec", "codec_config",
               "error_feedback", "policy", "seed", "test_accuracy", "test_loss", "train_loss",
               "bytes_raw_total", "bytes_wire_total", "bytes_up_wire", "bytes_down_wire",
               "compression_ratio_up", "compression_ratio_down", "compression_ratio_total",
               "uploads", "skipped_uploads")


def _ratio(raw: int, wire: int) -> float | None:
    return raw / wire if wire else None


def traffic(totals: dict[str, int]) -> dict[str, Any]:
    """Byte and ratio keys of a record from link-ledger totals (`LinkLedger.totals()`)."""
    up_raw, up_wire = totals["up_raw"], totals["up_wire"]
    down_raw, down_wire = totals["down_raw"], totals["down_wire"]
    return {
        "bytes_raw_total": up_raw + down_raw, "bytes_wire_total": up_wire + down_wire,
        "bytes_up_raw": up_raw, "bytes_up_wire": up_wire,
        "bytes_down_raw": down_raw, "bytes_down_wire": down_wire,
        "bytes_control": totals.get("control", 0),
        "compression_ratio_up": _ratio(up_raw, up_wire),
        "compression_ratio_down": _ratio(down_raw, down_wire),
        "compression_ratio_total": _ratio(up_raw + down_raw, up_wire + down_wire),
        "compression_ratio": _ratio(up_raw, up_wire),
        "uploads": totals.get("sent", 0), "skipped_uploads": totals.get("skipped", 0),
    }


def record(runtime: str, common: dict[str, Any], totals: dict[str, int],
           **extras: Any) -> dict[str, Any]:
    """A results row: the common keys (missing ones are an error), traffic from the ledger,
    then the runtime's own extras."""
    row: dict[str, Any] = {"runtime": runtime, **common, **traffic(totals)}
    missing = [k for k in COMMON_KEYS if k not in row]
    if missing:
        raise KeyError(f"run record for {runtime} lacks {missing}")
    row.update(extras)
    return row


def epoch_record(epoch: int, step: int, accuracy: float, loss: float, train_loss: float,
                 wire_cum: int, epoch_totals: dict[str, int], comm_time: float,
                 compute_time: float) -> dict[str, Any]:
    """One entry of a row's `history` (and an `epoch` event): evaluation, bytes, times.
    `epoch_totals` is `LinkLedger.close_epoch()` (uploads and skips may be overridden)."""
    return {"epoch": epoch, "step": step, "test_accuracy": accuracy, "test_loss": loss,
            "train_loss": train_loss, "bytes_wire_cum": wire_cum,
            "bytes_wire_epoch": epoch_totals["up_wire"] + epoch_totals["down_wire"],
            "uploads": epoch_totals["sent"], "skipped": epoch_totals["skipped"],
            "comm_time_s_sim": comm_time, "compute_time_s": compute_time}


def epoch_line(r: dict[str, Any]) -> str:
    """The training.log line of an epoch record."""
    return (f"epoch {r['epoch']}: acc={r['test_accuracy']:.4f} loss={r['test_loss']:.4f} "
            f"train_loss={r['train_loss']:.4f} MB/epoch={r['bytes_wire_epoch'] / 1e6:.3f} "
            f"sent={r['uploads']} skipped={r['skipped']}")
