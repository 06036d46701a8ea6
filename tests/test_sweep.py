"""`thinwire sweep`: the Pareto front, bytes to target, and a tiny grid end to end (PNG, table,
finished runs reused on a second call)."""

import json

from thinwire.cli import main
from thinwire.obs.pareto import bytes_to_target, pareto_front
from thinwire.sim.sweep import plan_sweep, summarize


def test_pareto_front_with_ties_dominated_points_and_equal_bytes():
    points = [
        (100, 0.90),   # 0 front: cheapest
        (200, 0.95),   # 1 front
        (200, 0.93),   # 2 equal bytes, less accurate: dominated by 1
        (300, 0.95),   # 3 equal accuracy, more bytes: dominated by 1
        (400, 0.99),   # 4 front: most accurate
        (400, 0.99),   # 5 the same point again: a tie, both on the front
        (500, 0.98),   # 6 more bytes, less accurate than 4
        (50, 0.50),    # 7 front: fewest bytes of all
        (150, 0.80),   # 8 dominated by 0 (fewer bytes, more accurate)
    ]
    assert pareto_front(points) == [True, True, False, False, True, True, False, True, False]
    assert pareto_front([]) == []
    assert pareto_front([(1, 0.1)]) == [True]


def test_bytes_to_target_is_the_first_epoch_at_or_above_it():
    history = [{"epoch": 1, "test_accuracy": 0.90, "bytes_wire_cum": 10},
               {"epoch": 2, "test_accuracy": 0.97, "bytes_wire_cum": 20},
               {"epoch": 3, "test_accuracy": 0.96, "bytes_wire_cum": 30}]
    assert bytes_to_target(history, 0.97) == (20, 2)
    assert bytes_to_target(history, 0.5) == (10, 1)
    assert bytes_to_target(history, 0.99) is None


def test_summary_sorts_by_bytes_to_target_and_never_last():
    def row(codec, seed, acc, total, hist):
        return {"run_name": f"sync-{codec}-always-s{seed}", "codec_config": codec,
                "codec": codec, "policy": "always", "seed": seed, "error_feedback": False,
                "test_accuracy": acc, "bytes_wire_total": total, "compression_ratio_total": 1,
                "history": [{"epoch": i + 1, "test_accuracy": a, "bytes_wire_cum": b}
                            for i, (a, b) in enumerate(hist)]}
    rows = [row("a", 0, 0.98, 200, [(0.9, 100), (0.98, 200)]),
            row("b", 0, 0.97, 60, [(0.97, 30), (0.97, 60)]),
            row("c", 0, 0.99, 300, [(0.99, 150), (0.99, 300)]),
            row("c", 1, 0.95, 300, [(0.9, 150), (0.95, 300)]),   # one seed misses: never
            row("d", 0, 0.5, 400, [(0.5, 400)])]
    out = summarize(rows, 0.97)
    assert [s["label"] for s in out] == ["b, always", "a, always", "c, always", "d, always"]
    assert [s["bytes_to_target"] for s in out] == [30, 200, None, None]
    assert [s["reached"] for s in out] == [1, 1, 1, 0]
    assert [s["front"] for s in out] == [True, True, False, False]  # c: 0.97 at 300 < a


def test_plan_takes_the_grid_from_a_file_and_flags_win(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("codecs: [none, 'topk(ratio=0.5)+int8']\npolicies: always,trigger\n"
                    "seeds: [0, 1]\ntarget: 90\ntask: synthetic\nepochs: 1\n")
    configs, target = plan_sweep(grid, {"out": tmp_path}, [], {})
    assert len(configs) == 8 and target == 0.9
    assert {c.codec for c in configs} == {"none", "topk(ratio=0.5)+int8"}
    configs, target = plan_sweep(grid, {"out": tmp_path}, ["epochs=2"],
                                 {"seeds": "3", "policies": "always", "target": 0.5})
    assert [(c.seed, c.policy, c.epochs) for c in configs] == [(3, "always", 2)] * 2
    assert target == 0.5
    sparse = [c for c in configs if c.codec != "none"][0]
    assert sparse.pack and not configs[0].pack  # per-codec sparsifier defaults


def test_tiny_sweep_writes_png_and_table_and_reuses_runs(tmp_path, capsys):
    args = ["sweep", "--task", "synthetic", "--set", "task_args.n_samples=200", "--nodes", "2",
            "--epochs", "1", "--codecs", "none,topk(ratio=0.5)+int8", "--error-feedback",
            "--policies", "always", "--seeds", "0", "--target", "0.3", "--no-progress",
            "--out", str(tmp_path)]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "0 reused" in first and "2 to run" in first
    results = tmp_path / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 2
    png, table = tmp_path / "pareto.png", tmp_path / "sweep.md"
    assert png.stat().st_size > 10_000
    text = table.read_text()
    assert "| none, always |" in text and "topk(ratio=0.5)+int8+ef, always" in text
    logs = {r["run_name"]: (tmp_path / r["run_name"] / "training.log").stat().st_mtime_ns
            for r in rows}
    before = results.read_text()

    assert main(args) == 0
    second = capsys.readouterr().out
    assert "2 reused" in second and "0 to run" in second
    assert results.read_text() == before  # no row appended: nothing ran again
    assert {n: (tmp_path / n / "training.log").stat().st_mtime_ns for n in logs} == logs
    assert png.stat().st_size > 10_000 and table.read_text() == text
