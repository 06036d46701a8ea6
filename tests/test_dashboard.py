"""The resource monitor, the dashboard's endpoints, and the page in a real headless Chromium
while `thinwire compare --dashboard` runs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from thinwire.codecs import decode, make_codec
from thinwire.errors import ThinwireError
from thinwire.obs.dashboard import DashboardServer, RunIndex
from thinwire.obs.dashboard.server import parse_address
from thinwire.obs.dashboard.app import create_app, parse_offsets
from thinwire.obs.events import EventLog, read_events
from thinwire.obs.ledger import LinkLedger
from thinwire.obs.monitor import Monitor
from thinwire.service.config import load_config
from thinwire.service.core import Coordinator
from thinwire.service.observe import start_events, stop_events
from thinwire.service.quick_test import free_port
from thinwire.tasks import load_task
from thinwire.wire import Update, serialize_update
from thinwire.wire.model import parse_model_message

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


# ---- the monitor ------------------------------------------------------------------------
def test_monitor_samples_rates_progress_and_extra(tmp_path):
    events, ledger = EventLog(tmp_path, "r"), LinkLedger()
    monitor = Monitor(events, ledger=ledger, every=0.05, node="p0",
                      extra=lambda: {"peers": {"n0": "alive"}}).start()
    events.step(10, train_loss=1.0, uploads=3, skipped=1)
    ledger.upload("n0", raw=400, wire=100)
    ledger.download("n0", raw=400, wire=50)
    time.sleep(0.05)
    events.step(20, train_loss=0.5, uploads=6, skipped=2)
    events.emit("epoch", epoch=1, test_accuracy=0.9, uploads=99, skipped=99)
    time.sleep(0.3)
    monitor.stop()
    events.close()
    samples = list(read_events(tmp_path, "resources"))
    assert len(samples) >= 3
    last, moved = samples[-1], [s for s in samples if s.get("bytes_up_bps")]
    assert last["node"] == "p0" and last["peers"] == {"n0": "alive"} and last["rss_bytes"] > 0
    assert last["step"] == 20 and last["train_loss"] == 0.5 and last["test_accuracy"] == 0.9
    assert last["upload_fraction"] == pytest.approx(6 / 8)  # epoch counts do not override
    assert 0 < last["step_time_s"] < 1
    assert moved and set(moved[0]["link_bps"]) == {"n0>aggregator", "aggregator>n0"}
    assert moved[0]["bytes_up_bps"] * 0.5 == pytest.approx(moved[0]["bytes_down_bps"], rel=0.01)
    assert all(isinstance(s.get("gpu_utilization", 0.0), (int, float)) for s in samples)


class FakeNvml:
    """pynvml's calls the monitor makes, on two GPUs; `broken` fails like a lost driver."""

    broken = False

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        if self.broken:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUtilizationRates(self, h: int):
        return types.SimpleNamespace(gpu=40 + 20 * h)

    def nvmlDeviceGetMemoryInfo(self, h: int):
        return types.SimpleNamespace(used=(h + 1) * 2**30)


def test_gpu_figures_from_pynvml_and_none_when_it_fails(monkeypatch):
    from thinwire.obs import resources

    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(resources, "_NVML", [])
    gpu = resources._gpu()
    assert gpu["gpu_count"] == 2 and gpu["gpu_utilization"] == 50
    assert gpu["gpu_memory_bytes"] == 3 * 2**30
    fake.broken = True
    assert "gpu_utilization" not in resources._gpu()  # absent, never an error
    monkeypatch.setattr(resources, "_NVML", [])
    assert "gpu_count" not in resources._gpu()


def test_coordinator_writes_round_and_resource_events(tmp_path):
    cfg = load_config(None, {"task": "synthetic", "task_args": {"n_samples": 200, "dim": 4},
                             "total_workers": 1, "max_rounds": 1})
    co = Coordinator(cfg, tmp_path, task=load_task("synthetic", n_samples=200, dim=4))
    monitor = start_events(co, every=0.05)
    co.register("a", "s")
    body, _ = co.pull("a")
    none = make_codec("none")
    tensors = [none.encode(torch.zeros_like(decode(t)), None, t.name)
               for t in parse_model_message(body)[1].tensors if not t.role]
    co.push(serialize_update(Update(node_id="a", round=0, seq=1, kind="delta", num_samples=10,
                                    base_version=0, tensors=tensors)))
    assert co.run_evaluations() == 1
    time.sleep(0.2)
    stop_events(co, monitor)
    co.close()
    events = list(read_events(tmp_path))
    rounds = [e for e in events if e["type"] == "round"]
    samples = [e for e in events if e["type"] == "resources"]
    assert len(rounds) == 1 and rounds[0]["peers"] == {"a": "active"}
    assert 0 <= rounds[0]["test_accuracy"] <= 1 and rounds[0]["bytes_up_wire"] > 0
    assert {(link["src"], link["dst"]) for link in rounds[0]["links"]} >= {
        ("a", "coordinator"), ("coordinator", "a")}
    assert samples and samples[-1]["peers"] == {"a": "active"}
    assert events[-1]["type"] == "end"


# ---- endpoints ----------------------------------------------------------------------------
def finished_run(folder: Path, name: str = "run-a") -> Path:
    log = EventLog(folder / name, name)
    for step in range(1, 4):
        log.step(step, train_loss=1.0 / step, bytes_up_wire=100 * step, uploads=step,
                 skipped=0)
    log.emit("resources", cpu_percent=50.0, rss_bytes=10**8, link_bps={"n0>hub": 1.0})
    log.emit("epoch", epoch=1, test_accuracy=0.5, test_loss=float("nan"))
    log.emit("end", record={"test_accuracy": 0.5})
    log.close()
    return folder / name


@pytest.fixture
def client(tmp_path):
    finished_run(tmp_path / "runs")
    (tmp_path / "secret.txt").write_text("not for the web\n")
    return TestClient(create_app(RunIndex([tmp_path / "runs"])))


def test_finished_run_is_listed_and_read_from_an_offset(client, tmp_path):
    runs = client.get("/api/runs").json()["runs"]
    assert [r["name"] for r in runs] == ["run-a"]
    first = client.get("/api/events", params={"run": "run-a"}).json()
    assert [e["type"] for e in first["events"]] == ["step"] * 3 + ["resources", "epoch", "end"]
    assert first["events"][4]["test_loss"] is None  # NaN is not JSON: null
    assert first["next"] == (tmp_path / "runs/run-a/events.jsonl").stat().st_size
    again = client.get("/api/events", params={"run": "run-a", "since": first["next"]}).json()
    assert again["events"] == [] and not again["reset"]
    page = client.get("/")
    assert page.status_code == 200 and "dashboard.js" in page.text
    assert client.get("/static/uPlot.iife.min.js").status_code == 200


def test_torn_lines_wait_and_a_restarted_file_resets(client, tmp_path):
    path = tmp_path / "runs/run-a/events.jsonl"
    size = path.stat().st_size
    with open(path, "a") as f:
        f.write('{"t": 1, "type": "step"')  # a writer mid-line
    torn = client.get("/api/events", params={"run": "run-a", "since": size}).json()
    assert torn["events"] == [] and torn["next"] == size
    path.write_text('{"t": 2, "type": "step", "step": 1}\n')  # a fresh run, same name
    fresh = client.get("/api/events", params={"run": "run-a", "since": size}).json()
    assert fresh["reset"] and fresh["start"] == 0 and fresh["events"][0]["step"] == 1


@pytest.mark.parametrize("url", [
    "/api/events?run=../secret.txt", "/api/events?run=%2E%2E%2Fsecret.txt",
    "/api/events?run=/etc/passwd", "/api/events?run=run-a/../../secret.txt",
    "/api/events?run=unknown", "/static/..%2F..%2Fsecret.txt", "/static/app.py",
    "/static/%2E%2E%2Fapp.py", "/../secret.txt", "/runs/run-a/events.jsonl", "/api/events"])
def test_unknown_runs_and_traversal_attempts_are_404(client, url):
    answer = client.get(url)
    assert answer.status_code == 404
    assert "not for the web" not in answer.text


@pytest.mark.parametrize("since", ["-1", "abc", "1e99", "²", "9" * 40, ""])
def test_bad_parameters_are_400_and_the_server_stays_up(client, since):
    assert client.get("/api/events", params={"run": "run-a", "since": since}).status_code == 400
    assert client.get("/api/runs").status_code == 200


def test_stream_sends_runs_then_events_and_resumes_from_offsets(tmp_path):
    run = finished_run(tmp_path)
    server = DashboardServer([tmp_path], port=0).start()
    try:
        first = sse_messages(server.url + "api/stream", 2)
        assert [kind for kind, _ in first] == ["runs", "events"]
        assert first[1][1]["run"] == "run-a" and len(first[1][1]["events"]) == 6
        end = first[1][1]["next"]
        log = EventLog(run, "run-a")
        log.emit("resources", cpu_percent=1.0)
        log.close()
        offsets = json.dumps({"run-a": end})
        later = sse_messages(server.url + "api/stream?offsets=" + offsets, 2)
        assert later[1][1]["start"] == end and len(later[1][1]["events"]) == 1
    finally:
        server.stop()


def test_a_port_in_use_and_a_bad_address_are_one_line_errors(tmp_path):
    server = DashboardServer([tmp_path], port=0)
    try:
        with pytest.raises(ThinwireError, match="cannot listen"):
            DashboardServer([tmp_path], port=server.port)
    finally:
        server.sock.close()
    assert parse_address("3000") == ("127.0.0.1", 3000)
    assert parse_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    for bad in ("abc", "host:", "70000"):
        with pytest.raises(ThinwireError):
            parse_address(bad)


def test_malformed_offsets_count_as_none():
    assert parse_offsets('{"a": 3, "b": -1, "c": "x"}') == {"a": 3}
    assert parse_offsets("{bad") == parse_offsets("[1]") == parse_offsets("") == {}


def sse_messages(url: str, count: int) -> list[tuple[str, dict]]:
    """The first `count` messages of a server-sent event stream."""
    out: list[tuple[str, dict]] = []
    with httpx.stream("GET", url, timeout=10) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in answer.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
                if len(out) == count:
                    return out
    return out


# ---- the page in a real browser ------------------------------------------------------------
def need_chromium() -> None:
    """Skip without Chromium and selenium, except in CI (.ci/run installs them): fail there."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        message = f"the browser test needs {', '.join(missing)} (apt-get install chromium " \
                  "chromium-driver; pip install -e .[dev])"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


def chromium(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,2300",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def responds(url: str) -> bool:
    try:
        return httpx.get(url + "api/runs", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def by_run(series: dict[str, int]) -> dict[str, int]:
    """Points per run in one chart (series are named 'RUN', 'RUN up', 'RUN/NODE ...')."""
    out: dict[str, int] = {}
    for name, count in series.items():
        run = name.split(" ")[0].split("/")[0]
        out[run] = out.get(run, 0) + count
    return out


@contextlib.contextmanager
def live_page(tmp_path: Path, command: list[str], log_name: str):
    """Start `thinwire COMMAND ... --dashboard PORT`, wait for its page, open it in Chromium;
    yield (process, driver, log path); kill what is left and remove the profile after."""
    need_chromium()
    port = free_port()
    cmd = [sys.executable, "-m", "thinwire.cli", *command, "--out", str(tmp_path / "runs"),
           "--no-progress", "--dashboard", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    log_path = tmp_path / log_name
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url, profile = f"http://127.0.0.1:{port}/", Path(tempfile.mkdtemp())
    driver = None
    try:
        wait_for(lambda: responds(url), 90, "the dashboard", proc)
        driver = chromium(profile)
        driver.get(url)
        yield proc, driver, log_path
    finally:
        if driver is not None:
            driver.quit()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


# charts every simulated run feeds (OS network counters may be hidden in a container)
LIVE_CHARTS = ("loss", "bytes", "bandwidth", "uploads", "cpu", "memory", "steptime")


@pytest.mark.slow
def test_charts_hold_every_run_and_grow_in_chromium(tmp_path):
    command = ["compare", "--task", "synthetic", "--set", "task_args={n_samples: 8000, dim: 8}",
               "--codecs", "none,int8", "--nodes", "2", "--epochs", "2", "--batch-size", "4",
               "--threads", "1", "--checkpoint-every", "0", "--monitor-every", "0.5"]
    with live_page(tmp_path, command, "compare.log") as (proc, driver, log):

        def charts() -> dict[str, dict[str, int]]:
            state = driver.execute_script("return window.thinwire.state()")
            return {k: by_run(v) for k, v in state["charts"].items()}

        first = wait_for(lambda: (c := charts())["loss"] and c, 90, "the first run", proc)
        both = wait_for(lambda: all(len(c[k]) == 2 for k in LIVE_CHARTS) and c
                        if (c := charts()) else None, 150, "points from both runs", proc)
        assert driver.execute_script("return window.thinwire.state()")["connected"]
        (run1,) = first["loss"]
        (run2,) = set(both["loss"]) - {run1}
        assert both["loss"][run1] > first["loss"][run1]  # the first run's charts grew
        wait_for(lambda: charts()["loss"][run2] > both["loss"][run2], 60,
                 "the second run's charts to grow", proc)
        state = driver.execute_script("return window.thinwire.state()")
        assert set(state["runs"]) == {run1, run2} and state["runs"][run1] == "finished"
        links = [n for n in state["charts"]["bandwidth"] if n.startswith(run2 + " node-")]
        assert len(links) == 2  # node-0 and node-1 uplinks of the live run
        peers = re.compile(re.escape(run2) + r": .*node-1 (alive|finished)")
        wait_for(lambda: peers.search(driver.find_element("id", "peers").text), 10,
                 "the peers of the second run")
        time.sleep(2)
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        if os.environ.get("THINWIRE_DASHBOARD_PNG"):  # refresh bench/dashboard.png
            shutil.copy(tmp_path / "dashboard.png", os.environ["THINWIRE_DASHBOARD_PNG"])
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_swarm_peers_feed_the_charts_in_chromium(tmp_path):
    """A live `thinwire swarm --dashboard`: points from both peer processes, and they grow."""
    command = ["swarm", "--nodes", "2", "--transport", "ipc", "--task", "synthetic",
               "--set", "task_args={n_samples: 6000, dim: 8}", "--epochs", "2",
               "--batch-size", "4", "--threads", "1", "--checkpoint-every", "0",
               "--monitor-every", "0.5"]
    with live_page(tmp_path, command, "swarm.log") as (proc, driver, log):

        def nodes(chart: str) -> dict[str, int]:
            """Points per peer in one chart of the run (series 'RUN/NODE ...', 'RUN NODE')."""
            series = driver.execute_script("return window.thinwire.state()")["charts"][chart]
            out: dict[str, int] = {}
            for name, count in series.items():
                node = re.search(r"node-\d+", name)
                if node:
                    out[node.group()] = out.get(node.group(), 0) + count
            return out

        both = wait_for(lambda: len(c := nodes("cpu")) == 2 and all(c.values()) and c, 120,
                        "resource points from both peers", proc)
        wait_for(lambda: all(nodes("cpu")[n] > k for n, k in both.items()), 60,
                 "both peers' points to grow", proc)
        state = driver.execute_script("return window.thinwire.state()")
        assert state["connected"] and len(state["runs"]) == 1
        (run,) = state["runs"]
        assert run.startswith("swarm-") and state["charts"]["loss"]
        peers = re.compile(re.escape(run) + r": .*node-0 .*node-1|" + re.escape(run)
                           + r": .*node-1 .*node-0")
        wait_for(lambda: peers.search(driver.find_element("id", "peers").text), 20,
                 "both peers in the peer list")
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
