"""`thinwire bench codecs`: one JSON object on stdout covering every registered codec."""

import json
import math

from thinwire.codecs import make_codec, names
from thinwire.obs import codec_bench

COVERED: set[str] = set()  # benchmarks every codec, tests none in depth


def run_json(capsys, *argv: str) -> dict:
    assert codec_bench.main(list(argv)) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1, "stdout must hold exactly one JSON line"
    return json.loads(out)


def test_json_covers_every_codec_with_sane_values(capsys):
    res = run_json(capsys, "--numel", "20000", "--json", "--repeat", "1")
    assert res["numel"] == 20000 and res["memcpy_MBps"] > 0
    by_name = {codec_bench.stage_name(spec): r for spec, r in res["codecs"].items()}
    assert set(by_name) == set(names())
    for name, r in by_name.items():
        assert "error" not in r, (name, r)
        assert r["encode_MBps"] > 0 and r["decode_MBps"] > 0, name
        assert r["ratio"] >= 0.99, name
        assert -1.0 - 1e-9 <= r["cos"] <= 1.0 + 1e-9 and r["rel_error"] >= 0, name
    assert by_name["none"]["rel_error"] == 0 and math.isclose(by_name["none"]["ratio"], 1,
                                                              rel_tol=0.01)
    assert by_name["fp16"]["rel_error"] < 1e-3 and by_name["fp16"]["cos"] > 0.9999
    assert 1.9 < by_name["fp16"]["ratio"] < 2.0 and 3.9 < by_name["int8"]["ratio"] < 4.0
    assert res["topk_vs_torch"] is None or res["topk_vs_torch"] > 0


def test_every_default_spec_builds():
    for name in names():
        make_codec(codec_bench.DEFAULT_SPECS.get(name, name))


def test_table_with_chosen_specs(capsys):
    code = codec_bench.main(["--numel", "3000", "--repeat", "1",
                             "--codecs", "int8(num_bits=4,block=64),fp16"])
    out, err = capsys.readouterr()
    assert code == 0 and "memcpy" in out
    assert "int8(num_bits=4,block=64)" in out and "fp16" in out
    assert "[1/2]" in err and "[1/2]" not in out  # progress goes to stderr only


def test_split_specs_respects_parentheses():
    assert codec_bench.split_specs("topk(ratio=0.1,index=raw)+int8, fp16,") == [
        "topk(ratio=0.1,index=raw)+int8", "fp16"]


def test_bad_spec_is_reported_not_raised(capsys):
    res = run_json(capsys, "--numel", "1000", "--repeat", "1", "--json", "--codecs", "nosuch")
    assert "error" in res["codecs"]["nosuch"]
