"""Federated experts: a real coordinator on 127.0.0.1 (subprocess), real worker processes
(python, sql, docs, and a second python worker), a tiny Qwen2 with a locally trained
tokenizer (no downloads), slices of ../shared/data/instruct.

The module shares one training run: the tests after `test_workers_build_experts_and_gateway`
read what it trained, and the last ones (rejections, kill -9) use their own specialty."""

import json

import pytest
import torch
from experts_harness import (CODEC, DATA, TOKEN, WORKERS, Coordinator, adapter, register,
                             routed, slices, upload)

from thinwire.codecs import decode, make_codec
from thinwire.errors import DataError, run_main
from thinwire.tasks.lm import merge as merging
from thinwire.tasks.lm.pretrained import load_base, unique_state
from thinwire.tasks.lm.qwen import make_tiny_base
from thinwire.tasks.lm.sft import encode_rows, heldout_loss, read_rows
from thinwire.tasks.lm.weights import load_weights, model_from_weights
from thinwire.wire.control import Register, serialize

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="instruct data not found")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    train, held = slices()
    for name, rows in train.items():
        with open(root / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    texts = [f"{r['prompt']}\n{r['reference_code']}" for rows in train.values() for r in rows]
    base = make_tiny_base(root / "base", texts, vocab_size=512)
    from thinwire.service.quick_test import free_port

    co = Coordinator(root, base, free_port())
    # the workers start now and train while the unit tests run (they wait for the coordinator)
    workers = {wid: co.worker(wid, spec, root / f"{file}.jsonl")
               for wid, (spec, file) in WORKERS.items()}
    yield {"root": root, "base": base, "co": co, "held": held, "train": train,
           "workers": workers}
    for proc in workers.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    co.stop()


# ---- units --------------------------------------------------------------------------------
def test_ffa_lora_aggregate_is_the_mean_of_dense_updates(world):
    """Two workers' adapters trained from the same expert: the expert the coordinator keeps
    after their round has exactly the mean dense ΔW (peft's own merge gives each ΔW)."""
    import argparse
    import copy

    from thinwire.experts.config import load_config
    from thinwire.experts.core import ExpertsCoordinator
    from thinwire.experts.link import LocalLink
    from thinwire.experts.trainer import Slice
    from thinwire.experts.worker import build_worker
    from thinwire.tasks.lm.embed import centroid

    cfg = load_config(None, {"base_model": str(world["base"]), "codec": "none",
                             "weight": "uniform", "lora_targets": ["q_proj", "v_proj"]})
    loaded = load_base(world["base"])
    co = ExpertsCoordinator(cfg, copy.deepcopy(loaded), world["root"] / "unit-state")
    rows, workers, dense = world["train"]["python_a"], [], []
    for i in range(2):
        base = copy.deepcopy(loaded)
        link = LocalLink(co, f"u{i}")
        prompts = [r["prompt"] for r in rows]
        conf = link.register(Register(f"u{i}", "s", "py", base=base.fingerprint,
                                      count=len(prompts), centroid=centroid(
                                          base.model, base.tokenizer, prompts).tolist()
                                      ))["config"]
        args = argparse.Namespace(max_length=128, lr=1e-2, batch_size=4, seed=i,
                                  speed_factor=1.0, worker_id=f"u{i}", out=None,
                                  specialty="py")
        workers.append(build_worker(link, conf, base, rows[i * 20:(i + 1) * 20], args, None))
    for w in workers:  # both pull before either uploads: the round waits for both
        w.load()
    for w in workers:
        for _ in range(3):
            w.trainer.train_for(0.0)
        merged = copy.deepcopy(w.trainer.model).merge_and_unload()  # peft's B·A, not ours
        dense.append({n: p.detach() - co.base_state[n]
                      for n, p in unique_state(merged).items()})
        assert w.upload(Slice(steps=3, samples=12, loss=1.0))
    expert = co.experts["py"]
    assert expert.version == 1 and len(expert.history[-1]["contributors"]) == 2
    ours = co.gateway.expert_delta(expert)
    mean = {n: (dense[0][n] + dense[1][n]) / 2 for n in dense[0]}
    assert set(ours) == {n for n in mean if mean[n].abs().max() > 0}
    for name, value in ours.items():
        assert torch.allclose(value, mean[name], atol=1e-6), name
    co.close()


def test_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "reference_code": "b"}\n\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: field 'reference_code' is missing"):
        read_rows(path)
    path.write_text('{"prompt": "a", "reference_code": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not a JSON object"):
        read_rows(path)
    path.write_text('{"prompt": "", "reference_code": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'prompt' is not a non-empty"):
        read_rows(path)


def test_hub_names_need_modelscope_or_huggingface(monkeypatch, capsys):
    import builtins

    from thinwire.errors import ConfigError
    from thinwire.experts.app import coordinator_main

    real = builtins.__import__

    def without_modelscope(name, *args, **kw):
        if name.split(".")[0] == "modelscope":
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", without_modelscope)
    with pytest.raises(ConfigError, match="ModelScope is not installed.*--use-huggingface"):
        load_base("qwen/Qwen2-0.5B-Instruct")
    monkeypatch.delenv("THINWIRE_TOKEN", raising=False)
    assert run_main(coordinator_main, ["--experts", "--host", "0.0.0.0"]) == 2
    assert "without a token" in capsys.readouterr().err


def test_ties_and_linear_merge():
    a = {"w": torch.tensor([1.0, -2.0, 3.0, 0.5])}
    b = {"w": torch.tensor([1.0, 2.0, -1.0, 0.5])}
    lin = merging.merge("linear", [a, b], [0.5, 0.5])
    assert torch.equal(lin["w"], torch.tensor([1.0, 0.0, 1.0, 0.5]))
    one = merging.merge("ties", [a], [1.0], density=1.0)
    assert torch.allclose(one["w"], a["w"])
    ties = merging.merge("ties", [a, b], [1.0, 1.0], density=1.0)
    # a sign is elected per coordinate (a tie elects none) and only agreeing values averaged
    assert torch.equal(ties["w"], torch.tensor([1.0, 0.0, 3.0, 0.5]))
    assert torch.equal(merging.trim(a["w"], 0.5), torch.tensor([0.0, -2.0, 3.0, 0.0]))
    assert merging.merge_weights("samples", {"x": 30, "y": 10}) == {"x": 0.75, "y": 0.25}
    assert merging.merge_weights("x=2", {"x": 1, "y": 1}) == {"x": 2.0, "y": 0.0}


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_loss_router_rebuilds_an_expert_when_its_version_changes(tmp_path, finetune):
    """Routing's cached view of an expert scores as the expert's merged model does, is
    reused while the version holds and rebuilt when it changes."""
    from thinwire.experts.config import load_config
    from thinwire.experts.core import ExpertsCoordinator
    from thinwire.server import HttpError
    from thinwire.tasks.lm.likelihood import prompt_ids, prompt_loss

    train, held = slices()
    base_dir = make_tiny_base(tmp_path / "base", [r["prompt"] for r in train["sql"]], "tiny",
                              300)
    cfg = load_config(None, {"base_model": str(base_dir), "codec": "none", "finetune": finetune,
                             "lora_targets": ["q_proj", "v_proj"], "prompt_loss": True})
    co = ExpertsCoordinator(cfg, load_base(base_dir), tmp_path / "state")
    gen = torch.Generator().manual_seed(0)

    def train_step(name: str) -> None:  # what closing a round does: new tensors, new version
        expert = co._expert(name)
        for t in expert.tensors.values():
            t.add_(torch.randn(t.shape, generator=gen) * 0.05)
        expert.version += 1

    def merged_loss(name: str, prompt: str) -> float:
        state = merging.apply(co.base_state, co.gateway.expert_delta(co.experts[name]))
        model = model_from_weights(co.base.model.config, state)
        return prompt_loss(model, *prompt_ids(co.base.tokenizer, prompt))

    prompt = held["sql_expert"][0]["prompt"]
    for name in ("a", "b"):
        train_step(name)
    first = co.route(prompt, "loss")
    view = co.loss_router().views["a"]
    assert (view.factors is not None) == (finetune == "lora") != (view.model is not None)
    assert first["method"] == "loss" and set(first["losses"]) == {"a", "b"}
    assert first["losses"]["a"] == pytest.approx(merged_loss("a", prompt), abs=1e-4)
    assert co.route(prompt, "loss")["losses"] == first["losses"]
    assert co.loss_router().views["a"] is view  # same version: reused
    train_step("a")
    again = co.route(prompt, "loss")
    assert co.loss_router().views["a"] is not view and co.loss_router().views["a"].version == 2
    assert again["losses"]["a"] != first["losses"]["a"]
    assert again["losses"]["a"] == pytest.approx(merged_loss("a", prompt), abs=1e-4)
    assert again["losses"]["b"] == first["losses"]["b"]
    with pytest.raises(HttpError, match="routing method 'nearest'"):
        co.route(prompt, "nearest")
    co.cfg = co.cfg.model_copy(update={"prompt_loss": False})
    assert "answers only" in co.route(prompt, "loss")["warning"]
    co.close()


def test_routing_config_and_prompt_labels():
    from thinwire.errors import ConfigError
    from thinwire.experts.config import load_config
    from thinwire.tasks.lm.qwen import chat_tokenizer
    from thinwire.tasks.lm.sft import IGNORE, encode

    assert load_config(None, {"routing": "loss", "prompt_loss": True}).routing == "loss"
    with pytest.raises(ConfigError, match="prompt_loss"):
        load_config(None, {"routing": "loss"})
    with pytest.raises(ConfigError, match="routing"):
        load_config(None, {"routing": "nearest"})
    tok = chat_tokenizer(["How many singers?", "SELECT count(*) FROM singer"], 300)
    answer_only = encode(tok, "How many singers?", "SELECT count(*) FROM singer", 64)
    both = encode(tok, "How many singers?", "SELECT count(*) FROM singer", 64, True)
    assert both.ids == answer_only.ids == both.labels
    first = next(i for i, v in enumerate(answer_only.labels) if v != IGNORE)  # the answer
    assert first > 5 and answer_only.labels[first:] == both.ids[first:]


# ---- real processes -----------------------------------------------------------------------
def test_workers_build_experts_and_gateway(world):
    co, root = world["co"], world["root"]
    co.ready()
    for wid, proc in world["workers"].items():
        assert proc.wait(timeout=120) == 0, (root / f"{wid}.log").read_text()[-3000:]
    status = co.get("/v1/status")
    experts = status["experts"]
    assert set(experts) == {"python_expert", "sql_expert", "docs_expert"}
    assert all(e["version"] >= 2 for e in experts.values()), experts
    together = [h for h in experts["python_expert"]["history"]
                if {c["worker"] for c in h["contributors"]} == {"py-1", "py-2"}]
    assert together, experts["python_expert"]["history"]  # one expert from two workers
    gateway = co.get("/v1/gateway")
    assert gateway["version"] == sum(e["version"] for e in experts.values())
    assert gateway["experts"] == {n: e["version"] for n, e in experts.items()}
    assert [h["version"] for h in gateway["history"]] == sorted(h["version"] for h in
                                                                 gateway["history"])
    assert status["upload_ratio"] > 10  # int8 LoRA B's against the fp32 model (tiny here)
    rows = [json.loads(line) for line in (root / "state" / "results.jsonl").open()]
    assert rows[-1]["runtime"] == "experts" and rows[-1]["compression_ratio_up"] > 10
    # the resource monitor of the coordinator and of each worker, for the dashboard
    from thinwire.obs.events import read_events

    samples = list(read_events(root / "state", "resources"))
    assert samples and set(samples[-1]["peers"]) == set(world["workers"])
    assert any(s.get("link_bps") for s in samples)  # bytes/s on the workers' links
    for wid in world["workers"]:
        mine = list(read_events(root / "events" / wid, "resources"))
        assert mine and all(s["node"] == wid and s["rss_bytes"] > 0 for s in mine), wid


def test_expert_beats_base_on_its_specialty(world):
    from thinwire.experts.client import CoordinatorClient

    base = load_base(world["base"])
    tok = base.tokenizer
    client = CoordinatorClient(world["co"].url, TOKEN)
    for specialty in ("python_expert", "sql_expert", "docs_expert"):
        held = encode_rows(tok, world["held"][specialty], 160)
        expert, _, _ = client.model(specialty)
        before, _ = heldout_loss(base.model, held, tok.pad_token_id)
        after, _ = heldout_loss(expert, held, tok.pad_token_id)
        assert after < before, (specialty, before, after)
    client.close()


def test_gateway_tool_saves_and_exports(world, capsys):
    from transformers import AutoModelForCausalLM

    from thinwire.cli import main as cli
    from thinwire.experts.client import CoordinatorClient

    root, co = world["root"], world["co"]
    npz, st, hf = root / "gw.npz", root / "gw.safetensors", root / "gw-hf"
    argv = ["gateway", "--coordinator-url", co.url, "--token", TOKEN, "--list-experts"]
    assert cli(argv + ["--save-gateway", str(npz)]) == 0
    assert cli(argv + ["--save-gateway", str(st), "--export-hf", str(hf)]) == 0
    out = capsys.readouterr().out
    assert "gateway version" in out and "python_expert v" in out and "merge: linear" in out
    model, _, _ = CoordinatorClient(co.url, TOKEN).model("gateway")
    ids = torch.randint(0, 500, (2, 24))
    want = model(input_ids=ids).logits
    for path in (npz, st):
        tensors = load_weights(path)
        assert "lm_head.weight" not in tensors  # tied: stored once
        again = model_from_weights(model.config, tensors)
        assert torch.equal(again(input_ids=ids).logits, want)
    exported = AutoModelForCausalLM.from_pretrained(str(hf), local_files_only=True)
    assert exported.lm_head.weight.data_ptr() == exported.model.embed_tokens.weight.data_ptr()
    assert torch.allclose(exported(input_ids=ids).logits, want, atol=1e-5)


def test_routing_and_generate(world, capsys):
    from thinwire.cli import main as cli

    co, held = world["co"], world["held"]
    share = routed(co, held)
    assert sum(share.values()) / len(share) >= 0.75, f"routing {share}"
    prompt = held["sql_expert"][0]["prompt"]
    assert cli(["generate", "--coordinator-url", co.url, "--token", TOKEN, "--prompt", prompt,
                "--max-new-tokens", "5"]) == 0
    assert "model: sql_expert v" in capsys.readouterr().out
    assert cli(["generate", "--coordinator-url", co.url, "--token", TOKEN, "--prompt", prompt,
                "--max-new-tokens", "5", "--model", "gateway"]) == 0
    assert "model: gateway v" in capsys.readouterr().out


def test_loss_routing(world, capsys):
    """Each expert's loss on the prompt picks the specialty (the experts learned prompts:
    the harness starts the coordinator with --prompt-loss); a bad method is refused."""
    from thinwire.cli import main as cli

    co, held = world["co"], world["held"]
    share = routed(co, held, "loss")
    assert min(share.values()) >= 0.75, f"loss routing {share}"
    prompt = held["docs_expert"][0]["prompt"]
    reply = co.call("POST", "/v1/route", json={"prompt": prompt, "method": "loss"}).json()
    assert set(reply["losses"]) == set(reply["scores"]) == set(held)
    assert "warning" not in reply
    r = co.call("POST", "/v1/route", json={"prompt": "x", "method": "nearest"})
    assert r.status_code == 400 and "method" in r.json()["error"], r.text
    assert cli(["generate", "--coordinator-url", co.url, "--token", TOKEN, "--prompt", prompt,
                "--max-new-tokens", "3", "--route", "loss"]) == 0
    out = capsys.readouterr().out
    assert f"model: {reply['expert']} v" in out and "routed by loss (losses: " in out


# ---- crafted clients: rejections and kill -9 ------------------------------------------------
def test_bad_updates_are_refused_clearly(world):
    co = world["co"]
    assert register(co, "probe-0").status_code == 200
    wrong_base = register(co, "probe-x", base="0" * 24)
    assert wrong_base.status_code == 409 and "base model" in wrong_base.json()["error"]
    assert register(co, "probe-y", centroid=[1.0]).status_code == 400
    zeros, version = adapter(co, "probe-0")
    name = next(iter(zeros))
    cases = {
        "has shape": upload("probe-0", {**zeros, name: torch.zeros(3, 3)}, 1, version),
        "missing": upload("probe-0", dict(list(zeros.items())[1:]), 2, version),
        "non-finite": upload("probe-0", zeros, 3, version, nan=True),
        "ahead of": upload("probe-0", zeros, 4, version + 5),
        "sent as a param": upload("probe-0", zeros, 5, version, role=""),
    }
    for expect, body in cases.items():
        r = co.call("POST", "/v1/updates", content=body)
        assert r.status_code == 400 and expect in r.json()["error"], (expect, r.text)
    r = co.call("POST", "/v1/updates", content=upload("probe-0", zeros, 9, version, "none"))
    assert r.status_code == 400 and "expects 'int8'" in r.json()["error"]
    r = co.call("POST", "/v1/updates", content=upload("probe-0", zeros, 10, version),
                token="wrong")
    assert r.status_code == 401 and "bearer token" in r.json()["error"]
    assert co.call("GET", "/v1/status", token="wrong").status_code == 401
    r = co.call("POST", "/v1/updates", content=b"\x00garbage")
    assert r.status_code == 400 and "malformed" in r.json()["error"]
    r = co.call("POST", "/v1/updates", content=upload("nobody", zeros, 1, 0))
    assert r.status_code == 404 and "not registered" in r.json()["error"]
    assert co.get("/v1/status")["experts"]["probe_expert"]["version"] == 0


def test_protobuf_registration_is_json_registration(world):
    """Workers register with a protobuf Register; JSON (curl) does the same; other types get
    415, malformed protobuf 400 (the coordinator goes on), and the token comes first."""
    co, base = world["co"], load_base(world["base"])
    hello = Register("probe-p", "probe", "probe3_expert", {"pid": "7"}, base=base.fingerprint,
                     centroid=[1e3] * base.model.config.hidden_size, count=1)

    def post(msg, token=TOKEN):
        return co.call("POST", "/v1/workers", token, content=serialize(msg),
                       headers={"Content-Type": "application/x-protobuf"})

    by_json = register(co, "probe-j", "probe3_expert", capabilities={"pid": 7})
    by_proto = post(hello)
    assert by_json.status_code == by_proto.status_code == 200, by_proto.text
    drop = ("worker_id", "gateway_version")  # the gateway moves while the workers train
    assert {k: v for k, v in by_json.json().items() if k not in drop} == \
        {k: v for k, v in by_proto.json().items() if k not in drop}
    workers = {w["id"]: w for w in co.get("/v1/status")["workers"]}
    assert workers["probe-p"]["specialty"] == workers["probe-j"]["specialty"] == "probe3_expert"
    short = post(Register("probe-s", "probe", "probe3_expert", base=base.fingerprint,
                          centroid=[1.0], count=1))
    assert short.status_code == 400 and "centroid" in short.json()["error"]
    r = co.call("POST", "/v1/workers", content=b"\xff\xff", headers={
        "Content-Type": "application/x-protobuf"})
    assert r.status_code == 400 and "malformed" in r.json()["error"]
    assert co.call("GET", "/v1/health").status_code == 200
    r = co.call("POST", "/v1/workers", content=serialize(hello), headers={
        "Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/x-protobuf" in r.json()["error"]
    assert post(hello, token="wrong").status_code == 401


def test_kill9_keeps_acknowledged_updates(world):
    """An acknowledged upload waits in an open round; kill -9; after the restart the round
    closes with it, versions continue, and a resend is a duplicate, not a second apply."""
    co = world["co"]
    for wid in ("probe-a", "probe-b"):
        assert register(co, wid, "probe2_expert").status_code == 200
    zeros, version = adapter(co, "probe-a")
    adapter(co, "probe-b")  # it pulled: the round waits for it
    gen = torch.Generator().manual_seed(0)
    a = {n: torch.randn(t.shape, generator=gen) * 1e-2 for n, t in zeros.items()}
    b = {n: torch.randn(t.shape, generator=gen) * 1e-2 for n, t in zeros.items()}
    body_a = upload("probe-a", a, 1, version)
    r = co.call("POST", "/v1/updates", content=body_a)
    assert r.status_code == 200 and r.json()["pending"] == ["probe-a"], r.text
    before = co.get("/v1/status")
    co.kill9()
    co.start()
    after = co.get("/v1/status")
    assert {n: e["version"] for n, e in after["experts"].items()} == \
        {n: e["version"] for n, e in before["experts"].items()}
    assert after["gateway"]["version"] == before["gateway"]["version"]
    assert after["experts"]["probe2_expert"]["pending"] == ["probe-a"]
    assert co.call("POST", "/v1/updates", content=body_a).json()["status"] == "duplicate"
    r = co.call("POST", "/v1/updates", content=upload("probe-b", b, 1, version))
    assert r.status_code == 200 and r.json()["expert_version"] == version + 1, r.text
    assert r.json()["gateway_version"] == before["gateway"]["version"] + 1
    got, _ = adapter(co, "probe-a")
    c = make_codec(CODEC)
    for n in zeros:
        want = (decode(c.encode(a[n], None, n)) + decode(c.encode(b[n], None, n))) / 2
        assert torch.allclose(got[n], want, atol=1e-7), n


def test_worker_refuses_a_bad_dataset_before_connecting(world, capsys):
    from thinwire.experts.worker import worker_main

    bad = world["root"] / "bad.jsonl"
    bad.write_text('{"prompt": "x", "reference_code": "y"}\n{"prompt": "only"}\n')
    argv = ["--coordinator-url", "http://127.0.0.1:9", "--worker-id", "w", "--specialty",
            "docs_expert", "--dataset", str(bad), "--base-model", str(world["base"])]
    assert run_main(worker_main, argv) == 2
    assert "bad.jsonl:2: field 'reference_code' is missing" in capsys.readouterr().err
