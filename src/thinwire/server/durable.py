"""How a coordinator stays `kill -9` safe between acknowledged updates (admission.py
journals each one): the whole state is snapshotted at each milestone, then the journal
starts over. `Durable` is mixed into a coordinator that knows its own state tree.
"""

from collections.abc import Callable
from typing import Any

from .state import StateStore

class Durable:
    """Snapshot side of a coordinator: `_tree()` is its whole state, `store` its directory.
    While `_replaying` the journal, nothing is snapshotted (the replay ends with one)."""

    store: StateStore
    _replaying: bool = False

    def _tree(self) -> dict[str, Any]:
        raise NotImplementedError

    def commit(self) -> None:
        """Snapshot everything, then drop the journal the snapshot now covers."""
        if self._replaying:
            return
        self.store.save(self._tree())
        self.store.reset_journal()

    def stored(self) -> dict[str, Any] | None:
        """The last snapshot's tree; None for a fresh state dir (which is snapshotted now)."""
        tree = self.store.load()
        if tree is None:
            self.commit()
        return tree

    def replay(self, apply: Callable[[dict[str, Any], bytes], bool]) -> int:
        """Hand every journaled record the snapshot does not cover to `apply`, in order,
        with snapshots held off; returns how many changed the state (`apply` said True)."""
        self._replaying, count = True, 0
        try:
            for record, body in self.store.records():
                count += bool(apply(record, body))
        finally:
            self._replaying = False
        return count
