from pathlib import Path

from thinwire.cli import build_parser
from thinwire.codecs.table import codec_table, readme_block

README = Path(__file__).parents[1] / "README.md"


def test_readme_codec_table_is_current():
    assert readme_block(README.read_text()) == codec_table(), (
        "run: python -m thinwire.codecs.table README.md")


def test_readme_commands_exist_in_the_cli():
    text = README.read_text()
    commands = build_parser()._subparsers._group_actions[0].choices
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("thinwire "):
            assert line.split()[1] in commands, line
    assert "make demo" in text and "make test" in text
