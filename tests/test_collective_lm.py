"""Collective LM task (issue 5): documents, resumable token cache, train_lm under torchrun,
the results row, profiler/TensorBoard/checkpoint files, validate, report and generate.

The torchrun run (2 gloo processes, tiny GPT-2) happens once per module; its outputs feed the
checks below.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from thinwire.tasks.lm import text as data_mod
from thinwire.collective.metrics import EXTENDED, REQUIRED

TEXT = Path("/work/shared/data/text/input.txt")


# ---- data: documents, resumable token cache ------------------------------------------------
@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(TEXT.read_text()[:40_000])
    return path


@pytest.fixture(scope="module")
def tokenizer(small_text):
    from thinwire.tasks.lm import train_tokenizer

    return train_tokenizer(data_mod.iter_documents(small_text), 300)


def test_text_documents_concatenate_back_to_the_file(small_text):
    docs = list(data_mod.iter_documents(small_text))
    assert len(docs) > 50 and "".join(docs) == small_text.read_text()


def test_json_array_is_streamed_as_title_newline_text(tmp_path, tokenizer):
    path = tmp_path / "wiki.json"
    items = [{"id": str(i), "title": f"T{i}", "text": "word " * (40 + i)} for i in range(30)]
    path.write_text(json.dumps(items))
    docs = list(data_mod.iter_documents(path))
    assert docs[3] == "T3\n" + "word " * 43
    folder = data_mod.build_cache(path, tokenizer, 16, tmp_path / "cache")
    blocks = data_mod.load_blocks(folder)
    assert int((blocks == tokenizer.eos_token_id).sum()) >= 25  # one EOS per article
    path.write_text('[{"id": 1, "title": "x"}]')
    with pytest.raises(Exception, match="text"):
        list(data_mod.iter_documents(path))


def test_token_cache_resumes_after_an_interrupted_build(tmp_path, small_text, tokenizer):
    calls: list[dict] = []

    def crash(meta):
        calls.append(meta)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        data_mod.build_cache(small_text, tokenizer, 32, tmp_path / "a", batch_docs=40,
                             on_shard=crash)
    folder = data_mod.cache_folder(small_text, tokenizer, 32, tmp_path / "a")
    meta = data_mod.read_meta(folder)
    assert meta["processed_docs"] == 80 and not meta["finalized"]
    resumed: list[dict] = []
    data_mod.build_cache(small_text, tokenizer, 32, tmp_path / "a", batch_docs=40,
                         on_shard=resumed.append)
    assert resumed[0]["processed_docs"] == 120, "the build must resume, not restart"
    fresh = data_mod.build_cache(small_text, tokenizer, 32, tmp_path / "b", batch_docs=40)
    assert torch.equal(data_mod.load_blocks(folder), data_mod.load_blocks(fresh))
    assert data_mod.read_meta(folder)["finalized"]


def test_other_ranks_wait_for_the_finalized_meta(tmp_path, small_text, tokenizer):
    import threading

    folder = data_mod.cache_folder(small_text, tokenizer, 32, tmp_path)
    builder = threading.Timer(0.3, data_mod.build_cache, (small_text, tokenizer, 32, tmp_path))
    builder.start()
    data_mod.wait_finalized(folder, timeout_s=60, poll_s=0.05)
    assert data_mod.read_meta(folder)["finalized"]
    builder.join()


# ---- end to end: torchrun, results row, checkpoint, validate, report, generate -------------
@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, small_text):
    out = tmp_path_factory.mktemp("lm")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "thinwire.collective.train_lm", "--data", str(small_text), "--out", str(out),
           "--model", "tiny", "--vocab-size", "300", "--max-length", "32", "--batch-size", "4",
           "--max-steps", "6", "--warmup-steps", "2", "--comm_compress", "topk",
           "--comm_config_json", '{"ratio": 0.05}', "--error-feedback",
           "--grad-error-every", "2", "--target-ppl", "1e9", "--eval-every", "3",
           "--profile", "--profile-steps", "2", "--run-name", "e2e", "--monitor-every", "0.2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, small_text, proc.stdout


def test_results_row_has_every_required_field(lm_run):
    out, _, _ = lm_run
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    missing = [k for k in (*REQUIRED, *EXTENDED) if k not in row]
    assert not missing, missing
    assert row["world_size"] == 2 and row["compress_method"] == "topk"
    assert row["compress_config"]["spec"] == "topk(ratio=0.05)"
    assert row["compression_ratio"] > 2 and 0 < row["density"] < 0.2
    assert row["grad_rel_error"] is not None and -1 <= row["grad_cos_sim"] <= 1
    assert row["comm_time_ms_by_op"] and row["residual_norm"] > 0
    assert row["time_to_target_ppl_s"] is not None and math.isfinite(row["val_ppl"])
    assert row["val_ppl"] == pytest.approx(math.exp(row["val_loss"]))


def test_profile_tensorboard_and_checkpoint_are_written(lm_run):
    out, _, stdout = lm_run
    prof = out / "logs" / "e2e" / "profiler"
    assert list(prof.glob("*.pt.trace.json")) and (prof / "summary_rank0.json").exists()
    summary = json.loads((prof / "summary_rank0.json").read_text())
    assert summary["by_category_ms"]["comm"] > 0 and "profiler summary" in stdout
    assert list((out / "logs" / "e2e" / "tensorboard").glob("events.*"))
    ckpt = out / "checkpoints" / "e2e"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "comm_state_rank1.pt"):
        assert (ckpt / name).exists(), name


def test_every_rank_streams_steps_and_resource_samples_for_the_dashboard(lm_run):
    from thinwire.obs.dashboard import RunIndex
    from thinwire.obs.events import read_events

    out, _, _ = lm_run
    folder = out / "logs" / "e2e"
    steps = list(read_events(folder, "step"))
    for rank in ("rank-0", "rank-1"):
        mine = [e for e in steps if e["node"] == rank]
        assert [e["step"] for e in mine] == list(range(6)), rank
        sent = [e["bytes_up_wire"] for e in mine]
        assert sent == sorted(sent) and sent[-1] > 0 and all(e["train_loss"] > 0 for e in mine)
    samples = list(read_events(folder, "resources"))
    assert {s["node"] for s in samples} == {"rank-0", "rank-1"}
    assert all(s["rss_bytes"] > 0 for s in samples)
    (end,) = read_events(folder, "end")
    assert end["record"]["run_name"] == "e2e"
    assert list(RunIndex([folder]).runs()) == ["e2e"]


def test_validate_ppl_is_exp_of_the_mean_token_loss(lm_run, capsys):
    from transformers import GPT2LMHeadModel

    from thinwire.tasks.lm import load_tokenizer
    from thinwire.collective.validate import validate_main

    out, text, _ = lm_run
    ckpt = out / "checkpoints" / "e2e"
    assert validate_main(["--model-dir", str(ckpt), "--data", str(text), "--max-length", "32",
                          "--batch-size", "16", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tok = load_tokenizer(ckpt)
    ids = [i for doc in data_mod.iter_documents(text) for i in tok(doc)["input_ids"]]
    blocks = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)
    model = GPT2LMHeadModel.from_pretrained(str(ckpt)).eval()
    total = 0.0
    with torch.no_grad():
        for batch in blocks.split(16):
            total += float(model(input_ids=batch, labels=batch).loss) * batch.numel() / 32 * 31
    mean = total / (blocks.size(0) * 31)
    assert got["tokens"] == blocks.size(0) * 31
    assert got["ppl"] == pytest.approx(math.exp(mean), rel=1e-5)


def test_report_and_generate(lm_run, capsys):
    from thinwire.collective.generate import generate_main
    from thinwire.collective.report import report_main

    out, _, _ = lm_run
    assert report_main([str(out)]) == 0
    assert "topk(ratio=0.05) [EF]" in capsys.readouterr().out
    assert (out / "report" / "val_ppl_vs_bytes.png").exists()
    assert (out / "report" / "step_time_by_method.png").exists()
    ckpt = out / "checkpoints" / "e2e"
    assert generate_main(["--model-dir", str(ckpt), "--prompt", "KING", "--max-new-tokens",
                          "4"]) == 0
    assert capsys.readouterr().out.startswith("KING")


def test_flags_accept_design_spellings():
    from thinwire.collective.options import parse_args
    from thinwire.errors import ConfigError

    args = parse_args(["--data_path", str(TEXT), "--output_dir", "o", "--comm_compress", "int8",
                       "--comm_config_json", '{"num_bits": 8}', "--max_steps", "3",
                       "--profile_steps", "2"])
    assert (args.comm_compress, args.comm_config, args.max_steps) == ("int8", {"num_bits": 8}, 3)
    for bad in (["--comm-config-json", "[1]"], ["--comm-compress", "bogus"],
                ["--comm-compress", "topk", "--comm-config-json", '{"ratio": 2}']):
        with pytest.raises(ConfigError):
            parse_args(["--data", str(TEXT), *bad])
    with pytest.raises(ConfigError, match="not a file"):
        parse_args(["--data", "missing.txt"])
