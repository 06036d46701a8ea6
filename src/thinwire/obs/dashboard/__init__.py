"""The live dashboard: one web page over the event streams of running and finished runs.

Every runtime shares it: `open_dashboard(args.dashboard, [folder])` beside a run (with
`add_dashboard_flag` on its parser), `thinwire dashboard [RUN_DIR...]` on its own. The page
reads only `events.jsonl` files, so it shows any runtime that writes them (obs/events.py),
and the resource monitor (obs/monitor.py) is what makes them live between epochs.
"""

from .runs import RunIndex, read_chunk
from .server import DashboardServer, add_dashboard_flag, dashboard_main, open_dashboard

__all__ = ["DashboardServer", "RunIndex", "add_dashboard_flag", "dashboard_main",
           "open_dashboard", "read_chunk"]
