"""Property: parse_update + decode of any bytes succeeds or raises WireError/CodecError.

Seeds are valid Updates over every codec example (tests/codec_cases.py) plus index codings
they do not reach; bench/fuzz_wire.py runs the same property for much longer.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec_cases import EXAMPLES
from thinwire.wire.fuzz import EXTRA_SPECS, mutate, parse_and_decode, seed_updates

SEEDS = seed_updates(list(EXAMPLES.values()) + list(EXTRA_SPECS))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def test_every_seed_is_valid():
    assert all(parse_and_decode(s) == "ok" for s in SEEDS)


@FUZZ
@given(seed=st.sampled_from(SEEDS), rng=st.randoms(use_true_random=False))
def test_mutated_updates_parse_or_raise_wire_or_codec_errors(seed, rng):
    parse_and_decode(mutate(seed, rng, SEEDS))


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes_parse_or_raise_wire_errors(data):
    assert parse_and_decode(data) in ("wire", "ok")
