"""Where a coordinator listens and who may call it: the flags every coordinator shares and
the rule that listening beyond this machine needs a token."""

import argparse
import ipaddress
import os
from pathlib import Path

from ..errors import ThinwireError


def add_listen_flags(p: argparse.ArgumentParser, state_dir: Path,
                     token_help: str = "bearer token clients must send") -> None:
    """--host, --port, --state-dir, --token, --insecure."""
    p.add_argument("--host", default="127.0.0.1",
                   help="127.0.0.1 (default) or 0.0.0.0 for every interface (needs --token)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--state-dir", type=Path, default=state_dir,
                   help="snapshot, journal and results (resumes if present)")
    p.add_argument("--token", default=os.environ.get("THINWIRE_TOKEN"),
                   help=f"{token_help} (default $THINWIRE_TOKEN)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without a token")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_token(host: str, token: str | None, insecure: bool = False) -> None:
    """Refuse to listen beyond this machine without a token (unless told it is trusted)."""
    if not is_loopback(host) and not token and not insecure:
        raise ThinwireError(f"refusing to listen on {host} without a token: pass --token "
                            "(or set THINWIRE_TOKEN), or --insecure on a trusted network")
