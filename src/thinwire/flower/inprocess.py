"""Run a Flower ServerApp and ClientApp in this process, without Ray.

Flower 1.41's simulation engine (`flwr run` on a local simulation federation, or
`flwr.simulation.run_simulation`) runs ClientApps through its only backend, `RayBackend`
(`pip install "flwr[simulation]"`: Ray and its dependencies). This module drives the same
machinery with one piece swapped: the ServerApp runs on Flower's `InMemoryGrid` over an
in-memory `LinkState`, the SuperNodes are registered and served by Flower's simulation
runtime (`vce_api.run_api`: its queues, workers and per-node `Context` store), and
`InProcessBackend` runs each ClientApp call here instead of in a Ray actor. Like a real
SuperNode, each message and each Context crosses Flower's protobuf serde (a copy per node,
so no node sees another's objects and Context.state must survive serialization).

Uses flwr internals (pinned: flwr>=1.41,<2); tests/test_flower.py runs it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from queue import Empty, Queue

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.config import get_fused_config_from_dir
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
from flwr.common.serde import (context_from_proto, context_to_proto, message_from_proto,
                               message_to_proto)
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import Backend
from flwr.server.superlink.fleet.vce.metrics import VceMetrics
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.serverapp import ServerApp
from flwr.simulation.run_simulation import run_serverapp_th
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid


def copy_message(message: Message) -> Message:
    return message_from_proto(message_to_proto(message))


class InProcessBackend(Backend):
    """Runs a ClientApp call in the calling worker thread (one at a time by default)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.app_fn: Callable[[], ClientApp] | None = None

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self.app_fn = app_fn

    @property
    def num_workers(self) -> int:
        return self.workers

    def is_worker_idle(self) -> bool:
        return True

    def terminate(self) -> None:
        pass

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        assert self.app_fn is not None, "build() first"
        context = context_from_proto(context_to_proto(context))
        reply = self.app_fn()(message=copy_message(message), context=context)
        return copy_message(reply), context_from_proto(context_to_proto(context))


def run_inprocess(server_app: ServerApp, client_app: ClientApp, num_supernodes: int,
                  app_dir: str | Path | None = None, run_config: dict | None = None,
                  workers: int = 1) -> Context:
    """Run `server_app` against `num_supernodes` SuperNodes running `client_app`; returns
    the ServerApp's final Context. `app_dir`: a Flower app folder whose pyproject.toml
    `[tool.flwr.app.config]` gives the run config (as `flwr run` would), `run_config`
    overrides it. Each node's `node_config` holds `partition-id` and `num-partitions`."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                               ObjectStoreFactory())
    run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
    task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run = Run.create_empty(run_id=run_id)
    run.primary_task_id, run.federation_id = task_id, NOOP_FEDERATION_ID
    run.override_config = dict(run_config or {})
    # the process's task identity, as run_simulation sets it (messages read it)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
    state = factory.state()
    state.run_ids[run_id] = RunRecord(run=run)
    state.task_store[task_id] = Task(task_id=task_id, run_id=run_id)
    grid = InMemoryGrid(state_factory=factory, pull_interval=0.02)
    grid.set_run(run)

    config = dict(run.override_config)
    if app_dir is not None:
        config = get_fused_config_from_dir(Path(app_dir), run.override_config)
    server_context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                             run_config=config)
    stop = threading.Event()
    errors: Queue[BaseException] = Queue()
    contexts: Queue[Context] = Queue()
    thread = run_serverapp_th(server_app_attr=None, server_app=server_app,
                              server_app_context=server_context, grid=grid,
                              app_dir=str(app_dir or "."), f_stop=stop,
                              exception_queue=errors, enable_tf_gpu_growth=False,
                              ctx_queue=contexts)
    nodes = vce_api._register_nodes(num_nodes=num_supernodes, state_factory=factory)
    stores = vce_api._register_node_info_stores(
        nodes, run, app_dir=str(Path(app_dir).absolute()) if app_dir is not None else None)
    try:
        vce_api.run_api(lambda: client_app, lambda: InProcessBackend(workers), nodes, factory,
                        stores, stop, VceMetrics())
    finally:
        stop.set()
        thread.join()
    try:
        raise errors.get_nowait()
    except Empty:
        pass
    return contexts.get(timeout=5)


__all__ = ["InProcessBackend", "copy_message", "run_inprocess"]
