import pytest
import torch

from thinwire.errors import ConfigError
from thinwire.policy import EveryK, LAQRule, ModelDiffHistory, SendContext, Trigger, make_policy
from thinwire.strategy import Contribution, Strategy, select_budget, select_top_k


def decisions(policy, contexts):
    out = []
    for ctx in contexts:
        send, reason = policy.decide(ctx)
        if send:
            policy.sent(ctx)
        out.append((send, reason))
    return out


def test_trigger_fires_on_norm_change_low_confidence_and_interval():
    p = Trigger(grad_norm_threshold=0.15, confidence_threshold=0.7, sync_interval=5)
    ctxs = [SendContext(0, 1.0, 0.9), SendContext(1, 1.1, 0.9),   # +10%: skip
            SendContext(2, 1.2, 0.9),                             # +20% vs last sent: send
            SendContext(3, 1.2, 0.5),                             # low confidence: send
            SendContext(4, 1.2, 0.9), SendContext(5, 1.2, 0.9), SendContext(6, 1.2, 0.9),
            SendContext(7, 1.2, 0.9), SendContext(8, 1.2, 0.9)]   # 5 steps since 3: send
    got = decisions(p, ctxs)
    assert [s for s, _ in got] == [True, False, True, True, False, False, False, False, True]
    assert [r for s, r in got if s] == ["first", "grad_norm", "confidence", "interval"]


def test_every_k():
    assert [EveryK(3).decide(SendContext(i))[0] for i in range(7)] == [
        True, False, False, True, False, False, True]


def test_laq_rule_skips_small_innovations_and_respects_clock():
    hist = ModelDiffHistory(depth=2)
    hist.push(1.0)
    hist.push(1.0)
    p = LAQRule(hist, alpha=1.0, workers=1, depth=2, xi=0.5, t_bar=3, warmup=1)
    # threshold = 0.5*(1+1)/(1*1) + 3*(err + last_err) = 1 + 3*(0.1 + last)
    assert p.decide(SendContext(0, innovation_sq=0.0, error_sq=0.1)) == (True, "warmup")
    p.sent(SendContext(0, error_sq=0.1))
    assert p.threshold(0.1) == pytest.approx(1.6)
    assert p.decide(SendContext(1, innovation_sq=1.5, error_sq=0.1)) == (False, "lazy")
    assert p.decide(SendContext(2, innovation_sq=1.7, error_sq=0.1)) == (True, "innovation")
    p.sent(SendContext(2, error_sq=0.1))
    assert p.decide(SendContext(3, innovation_sq=0.0, error_sq=0.1))[0] is False
    assert p.decide(SendContext(4, innovation_sq=0.0, error_sq=0.1))[0] is False
    assert p.decide(SendContext(5, innovation_sq=0.0, error_sq=0.1)) == (True, "clock")


def test_laq_threshold_grows_with_model_movement():
    hist = ModelDiffHistory(depth=10)
    p = LAQRule(hist, alpha=0.1, workers=4)
    base = p.threshold(0.0)
    hist.push(5.0)
    assert p.threshold(0.0) > base
    assert p.threshold(0.0) == pytest.approx(0.08 * 5.0 / (0.01 * 16))


def test_policy_specs():
    assert make_policy("every:4").k == 4
    for bad in ("every:x", "every:0", "sometimes"):
        with pytest.raises(ConfigError):
            make_policy(bad)


def contrib(value, samples=1, confidence=1.0):
    return Contribution({"w": torch.tensor([float(value)])}, samples, confidence)


def test_aggregator_reuses_or_drops_skipped_nodes():
    reuse, drop = Strategy(skipped="reuse"), Strategy(skipped="drop")
    for agg in (reuse, drop):
        agg.submit("a", contrib(1.0))
        agg.submit("b", contrib(3.0))
        assert agg.result().tensors["w"].item() == 2.0
        agg.submit("a", contrib(5.0))  # b skips this round
    assert reuse.result().tensors["w"].item() == 4.0   # (5 + reused 3) / 2
    assert drop.result().tensors["w"].item() == 5.0


def test_weighted_by_samples_and_confidence_and_robust_rules():
    agg = Strategy(weight="samples")
    agg.submit("a", contrib(0.0, samples=3))
    agg.submit("b", contrib(4.0, samples=1))
    assert agg.result().tensors["w"].item() == 1.0
    agg = Strategy(weight="confidence")
    agg.submit("a", contrib(0.0, confidence=0.25))
    agg.submit("b", contrib(4.0, confidence=0.75))
    assert agg.result().tensors["w"].item() == 3.0
    agg = Strategy(rule="median", weight="uniform")
    for i, v in enumerate([1.0, 2.0, 1000.0]):
        agg.submit(str(i), contrib(v))
    assert agg.result().tensors["w"].item() == 2.0


def test_budget_selection():
    scores = {"a": 1.0, "b": 5.0, "c": 3.0}
    assert select_top_k(scores, 2) == ["b", "c"]
    gains = {"a": 10.0, "b": 9.0, "c": 1.0}
    costs = {"a": 100, "b": 30, "c": 10}
    # gain/cost: b 0.3, c 0.1, a 0.1 (tie broken by id) -> b, then a does not fit, c does
    assert select_budget(gains, costs, budget_bits=60) == ["b", "c"]
    assert select_budget(gains, costs, budget_bits=200) == ["a", "b", "c"]


def test_accumulated_skips_are_applied_exactly_once():
    """`skipped=accumulate`: a node keeps what it skips and sends it with its next upload;
    the aggregator counts it as zero meanwhile, so the sum of applied means equals the
    always-send sum, only later."""
    from thinwire.codecs import Encoder, decode
    from thinwire.exchange import Sender

    node = Sender("node-0", Encoder("none"), EveryK(3), accumulate=True)
    other = Sender("node-1", Encoder("none"), EveryK(1), accumulate=True)
    agg = Strategy("mean", "uniform", "accumulate")
    grads = [torch.full((2,), float(i + 1)) for i in range(6)]
    applied = torch.zeros(2)
    for step, g in enumerate(grads):
        for n, t in ((node, g), (other, 10 * g)):
            d = n.propose({"w": t}, step, 1.0)
            if d.send:
                agg.submit(n.node_id, Contribution({"w": decode(d.payloads[0])}))
        out = agg.result()
        applied += out.tensors["w"] if out is not None else 0
    # node 0 sent at steps 0 and 3 (g0, g1+g2+g3); g4+g5 are still pending
    assert node.pending is not None and torch.equal(node.pending["w"], grads[4] + grads[5])
    expected = (sum(grads[:4]) + 10 * sum(grads)) / 2
    assert torch.allclose(applied, expected)
    with pytest.raises(ConfigError, match="accumulate"):
        Strategy("median", "uniform", "accumulate")
    with pytest.raises(ConfigError, match="accumulate"):
        Strategy("mean", "confidence", "accumulate")


def test_accumulate_counts_silent_nodes_and_leaves_buffers_alone():
    agg = Strategy("mean", "uniform", "accumulate", expected_nodes=4)
    from thinwire.exchange import TensorSet

    tensors = TensorSet({"w": torch.ones(2)}).add({"bn.var": torch.full((2,), 3.0)}, "buffer")
    agg.submit("a", Contribution(tensors))
    out = agg.result().tensors
    assert torch.allclose(out["w"], torch.full((2,), 0.25))  # 3 nodes not heard from yet
    assert out.role("bn.var") == "buffer"
    assert torch.allclose(out["bn.var"], torch.full((2,), 3.0))  # absolute, unscaled


def test_rolled_back_send_keeps_pending_updates():
    from thinwire.codecs import Encoder
    from thinwire.exchange import Sender

    node = Sender("node-0", Encoder("none"), EveryK(2), accumulate=True)
    assert node.propose({"w": torch.ones(2)}, 0, 1.0).send
    assert not node.propose({"w": torch.ones(2)}, 1, 1.0).send  # kept as pending
    d = node.propose({"w": torch.ones(2)}, 2, 1.0, tentative=True)
    assert d.send and torch.equal(d.recon["w"], 2 * torch.ones(2))  # pending added
    node.rollback(d)  # the coordinator refused it
    assert torch.equal(node.pending["w"], torch.ones(2))
    d = node.propose({"w": torch.ones(2)}, 2, 1.0, tentative=True)
    node.commit(d)  # accepted this time: pending is spent
    assert node.pending is None and torch.equal(node.last_sent["w"], 2 * torch.ones(2))


def test_krum_ignores_an_outlier_and_exclude_hides_departed_nodes():
    agg = Strategy(rule="krum", weight="uniform")
    for i, v in enumerate([1.0, 1.1, 0.9, 1.05, 0.95, 1000.0]):
        agg.submit(f"n{i}", Contribution({"w": torch.full((3,), v), "b": torch.full((2,), v)}))
    out = agg.result().tensors
    assert float(out["w"].max()) < 2 and float(out["b"].max()) < 2
    reuse = Strategy(skipped="reuse", weight="uniform")
    reuse.submit("a", Contribution({"w": torch.tensor([1.0])}))
    reuse.submit("b", Contribution({"w": torch.tensor([3.0])}))
    reuse.result()
    reuse.submit("a", Contribution({"w": torch.tensor([5.0])}))
    combined = reuse.result(exclude={"b"})  # b left: its last contribution is not reused
    assert combined.count == 1 and combined.tensors["w"].item() == 5.0
    reuse.submit("a", Contribution({"w": torch.tensor([5.0])}))
    assert reuse.result().tensors["w"].item() == 4.0  # b is back: reused again


def test_keyed_strategy_keeps_one_model_per_key():
    from thinwire.strategy import KeyedStrategy

    keyed = KeyedStrategy(lambda: Strategy(weight="uniform"))
    keyed.submit("python", "w1", Contribution({"w": torch.tensor([1.0])}))
    keyed.submit("sql", "w2", Contribution({"w": torch.tensor([9.0])}))
    assert keyed.result("python").tensors["w"].item() == 1.0
    assert keyed.result("sql").tensors["w"].item() == 9.0
    assert keyed.keys() == ["python", "sql"]
    restored = KeyedStrategy(lambda: Strategy(weight="uniform"))
    restored.load_state_dict(keyed.state_dict())
    assert restored.of("sql").last["w2"].tensors["w"].item() == 9.0
