"""One example spec per registered codec, used by the shared codec tests.

Every codec in the registry must appear here, and its own test module must list it in
COVERED (tests/test_codec_registry.py checks both, hivemind-style).
"""

EXAMPLES: dict[str, str] = {
    "none": "none",
    "fp16": "fp16",
    "bf16": "bf16",
    "int8": "int8",
    "qsgd": "qsgd(levels=16)",
    "nc": "nc",
    "terngrad": "terngrad",
    "signsgd": "signsgd(scale=mean)",
    "onebit": "onebit",
    "topk": "topk(ratio=0.1)",
    "randomk": "randomk(ratio=0.1)",
    "thresholdv": "thresholdv(v=0.5)",
    "dgc": "dgc(ratio=0.1)",
    "sketch": "sketch(rows=5,cols=64,heavy=8)",
    "powersgd": "powersgd(rank=2)",
    "laq": "laq(bits=4)",
    "bbit": "bbit(bits=4)",
    "bin": "bin",
}

# Error feedback needs a contractive codec and tracks the raw inputs only without momentum.
EF_EXAMPLES: dict[str, str] = {
    **EXAMPLES,
    "randomk": "randomk(ratio=0.1,unbiased=false)",
    "dgc": "dgc(ratio=0.1,momentum=0.0)",
}
