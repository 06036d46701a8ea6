import pytest
import torch

from thinwire.aggregate import Aggregator, Contribution
from thinwire.errors import ConfigError
from thinwire.policy import (EveryK, LAQRule, ModelDiffHistory, SendContext, Trigger, make_policy,
                             select_budget, select_top_k)


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
    reuse, drop = Aggregator(skipped="reuse"), Aggregator(skipped="drop")
    for agg in (reuse, drop):
        agg.submit("a", contrib(1.0))
        agg.submit("b", contrib(3.0))
        assert agg.result()["w"].item() == 2.0
        agg.submit("a", contrib(5.0))  # b skips this round
    assert reuse.result()["w"].item() == 4.0   # (5 + reused 3) / 2
    assert drop.result()["w"].item() == 5.0


def test_weighted_by_samples_and_confidence_and_robust_rules():
    agg = Aggregator(weight="samples")
    agg.submit("a", contrib(0.0, samples=3))
    agg.submit("b", contrib(4.0, samples=1))
    assert agg.result()["w"].item() == 1.0
    agg = Aggregator(weight="confidence")
    agg.submit("a", contrib(0.0, confidence=0.25))
    agg.submit("b", contrib(4.0, confidence=0.75))
    assert agg.result()["w"].item() == 3.0
    agg = Aggregator(rule="median", weight="uniform")
    for i, v in enumerate([1.0, 2.0, 1000.0]):
        agg.submit(str(i), contrib(v))
    assert agg.result()["w"].item() == 2.0


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
    from thinwire.sim.nodes import SimNode

    node = SimNode(0, torch.arange(4), Encoder("none"), EveryK(3), accumulate=True)
    other = SimNode(1, torch.arange(4), Encoder("none"), EveryK(1), accumulate=True)
    agg = Aggregator("mean", "uniform", "accumulate")
    grads = [torch.full((2,), float(i + 1)) for i in range(6)]
    applied = torch.zeros(2)
    for step, g in enumerate(grads):
        for n, t in ((node, g), (other, 10 * g)):
            d = n.decide({"w": t}, step, 1.0)
            if d.send:
                agg.submit(n.node_id, Contribution({"w": decode(d.payloads[0])}))
        out = agg.result()
        applied += out["w"] if out is not None else 0
    # node 0 sent at steps 0 and 3 (g0, g1+g2+g3); g4+g5 are still pending
    assert node.pending is not None and torch.equal(node.pending["w"], grads[4] + grads[5])
    expected = (sum(grads[:4]) + 10 * sum(grads)) / 2
    assert torch.allclose(applied, expected)
    with pytest.raises(ConfigError, match="accumulate"):
        Aggregator("median", "uniform", "accumulate")
    with pytest.raises(ConfigError, match="accumulate"):
        Aggregator("mean", "confidence", "accumulate")


def test_accumulate_counts_silent_nodes_and_leaves_buffers_alone():
    agg = Aggregator("mean", "uniform", "accumulate", expected_nodes=4)
    agg.submit("a", Contribution({"w": torch.ones(2), "buffer:bn.var": torch.full((2,), 3.0)}))
    out = agg.result()
    assert torch.allclose(out["w"], torch.full((2,), 0.25))  # 3 nodes not heard from yet
    assert torch.allclose(out["buffer:bn.var"], torch.full((2,), 3.0))  # absolute, unscaled


def test_rolled_back_send_keeps_pending_updates():
    from thinwire.codecs import Encoder
    from thinwire.sim.nodes import SimNode

    node = SimNode(0, torch.arange(4), Encoder("none"), EveryK(2), accumulate=True)
    assert node.decide({"w": torch.ones(2)}, 0, 1.0).send
    assert not node.decide({"w": torch.ones(2)}, 1, 1.0).send  # kept as pending
    d = node.decide({"w": torch.ones(2)}, 2, 1.0, tentative=True)
    assert d.send and node.pending is None
    node.rollback(d.snapshot)  # the coordinator refused it
    assert torch.equal(node.pending["w"], torch.ones(2))
