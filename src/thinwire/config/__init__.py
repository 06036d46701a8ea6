"""One config base for every runtime: shared sections, the file < flags < `--set` builder,
and argparse flags generated from the models.

    from thinwire.config import build
    cfg = build(RunConfig, "comm.yaml", {"epochs": 2}, ["communication.sync_interval=3"])
"""

from .base import (Strict, aliases, apply_set, build, canonical, describe, load_file, merge,
                   validate)
from .flags import add_command_flags, add_config_flags, config_flags
from .sections import (LAQ, CodecSection, Communication, LinkSection, OutputSection,
                       PolicySection, ServerSection, StrategySection, TaskSection, redefault)

__all__ = ["LAQ", "CodecSection", "Communication", "LinkSection", "OutputSection",
           "PolicySection", "ServerSection", "StrategySection", "Strict", "TaskSection",
           "add_command_flags", "add_config_flags",
           "aliases", "apply_set", "build", "canonical", "config_flags", "describe",
           "load_file", "merge", "redefault", "validate"]
