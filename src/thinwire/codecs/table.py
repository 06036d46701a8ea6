"""The codec table shown by `thinwire codecs` and in the README."""

from __future__ import annotations

from .registry import REGISTRY


def codec_table() -> str:
    rows = [["codec", "what it sends", "bytes/element", "unbiased", "error feedback", "linear"]]
    for name in sorted(REGISTRY):
        c = REGISTRY[name]
        if not c.lossy:
            ef = "not needed (lossless)"
        elif c.own_feedback:
            ef = "built in"
        else:
            ef = "recommended" if c.wants_error_feedback else "optional"
        rows.append([f"`{name}`", c.summary, c.bytes_per_element,
                     "yes" if c.unbiased else "no", ef, "yes" if c.linear else "no"])
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines)


START, END = "<!-- codec-table", "<!-- /codec-table -->"


def readme_block(text: str) -> str:
    """The generated table between the README markers."""
    start = text.index("\n", text.index(START)) + 1
    return text[start: text.index(END)].strip()


def update_readme(path: str) -> None:
    with open(path) as f:
        text = f.read()
    start = text.index("\n", text.index(START)) + 1
    end = text.index(END)
    with open(path, "w") as f:
        f.write(text[:start] + codec_table() + "\n" + text[end:])


if __name__ == "__main__":
    import sys

    from . import names  # noqa: F401  (registers every codec)

    update_readme(sys.argv[1])
