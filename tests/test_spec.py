import pytest

from thinwire.codecs import make_codec
from thinwire.codecs.spec import parse, split_top_level
from thinwire.errors import ConfigError


def test_parse_chain_with_params():
    assert parse("topk(ratio=0.01, index=varint+zlib)+int8(num_bits=4)") == [
        ("topk", {"ratio": 0.01, "index": "varint+zlib"}), ("int8", {"num_bits": 4})]


def test_split_keeps_commas_inside_parentheses():
    assert split_top_level('none,int8,topk(ratio=0.01,k=3)+int8', ",") == [
        "none", "int8", "topk(ratio=0.01,k=3)+int8"]


def test_json_forms():
    assert parse('{"method": "int8", "num_bits": 6}') == [("int8", {"num_bits": 6})]
    assert parse([{"method": "fp16"}]) == [("fp16", {})]


def test_extra_params_go_to_first_stage():
    codec = make_codec("int8", extra={"num_bits": 4})
    assert codec.params.num_bits == 4


@pytest.mark.parametrize("bad, fragment", [
    ("", "empty codec spec"),
    ("int8(", "unbalanced"),
    ("int8(num_bits)", "key=value"),
    ("nosuch", "valid codecs"),
    ("int8(num_bits=1)", "num_bits"),
    ("int8(bits=3)", "unknown parameter 'bits'"),
    ('{"num_bits": 3}', "method"),
    ("{not json", "not valid JSON"),
    ("int8+fp16", "cannot be followed"),
])
def test_bad_specs_give_one_clear_line(bad, fragment):
    with pytest.raises(ConfigError) as info:
        make_codec(bad)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_spec_round_trips_through_its_canonical_string():
    codec = make_codec("int8(num_bits=4,block=32)")
    assert make_codec(codec.spec()).spec() == codec.spec() == "int8(num_bits=4,block=32)"
