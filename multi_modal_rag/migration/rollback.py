"""After a migration: move the alias back (carrying writes made since the swap), or delete the unused index.

Both refuse while another process holds a live lease on the migration. A rollback that takes effect
during a run is seen by that run at its next state save, before it can move the alias.
"""

from __future__ import annotations

from opensearchpy import OpenSearch

from .. import store
from ..encoders import Encoder
from ..errors import MigrationError
from .state import LEASE_SECONDS, UNFINISHED, MigrationState, StateStore
from .sync import Copier, reconcile


def _claim(states: StateStore, action: str) -> MigrationState:
    state = states.read()
    if state is None:
        raise MigrationError(f"No migration of {states.alias!r} is recorded; nothing to {action}.")
    if state.lease_is_live():
        raise MigrationError(f"A migration of {states.alias!r} is running in {state.lease_owner}; stop it before you "
                             f"{action} (its lease lapses {LEASE_SECONDS:.0f} s after it stops).")
    return state


def rollback(client: OpenSearch, alias: str) -> MigrationState:
    """Point the alias back at the index it had before the last migration.

    After a swap, papers written, changed or deleted through the alias since then are carried back into the
    old index first (re-embedded with its model), under a write block on the new one.
    """
    states = StateStore(client, alias)
    state = _claim(states, "roll back")
    if not client.indices.exists(index=state.source_index):
        raise MigrationError(f"The previous index {state.source_index!r} was already cleaned up; cannot roll back.")
    current = store.alias_indices(client, alias)
    if state.target_index in current and client.indices.exists(index=state.target_index):
        source_spec = store.spec_of(client, state.source_index)
        copier = Copier(client, Encoder(source_spec.model, precision=source_spec.precision), source_spec,
                        state.source_index)
        store.set_write_block(client, state.target_index, True)
        store.set_write_block(client, state.source_index, False)
        fixed = reconcile(copier, state.target_index)
        state.frozen_marks = store.shard_checkpoints(client, state.target_index)
        state.message = (f"alias {alias} -> {state.source_index}; carried back {len(fixed.source_only)} new, "
                         f"{len(fixed.changed)} changed and {len(fixed.target_only)} deleted papers")
    else:
        state.message = f"alias {alias} -> {state.source_index}"
    actions = [{"remove": {"index": i, "alias": alias}} for i in current if i != state.source_index]
    if state.source_index not in current:
        actions.append({"add": {"index": state.source_index, "alias": alias}})
    if actions:
        client.indices.update_aliases(body={"actions": actions})
    store.set_write_block(client, state.source_index, False)
    state.status = "rolled_back"
    states.release(state)
    return state


def cleanup(client: OpenSearch, alias: str) -> list[str]:
    """Delete the index the alias no longer uses after a finished or rolled-back migration.

    Refused while that index holds writes made after it was frozen (they exist nowhere else).
    """
    states = StateStore(client, alias)
    state = _claim(states, "clean up")
    if state.status in UNFINISHED:
        raise MigrationError(f"The migration to {state.target_index} is unfinished ({state.status}); "
                             "resume it or roll it back first.")
    current = set(store.alias_indices(client, alias))
    unused = [i for i in (state.source_index, state.target_index) if i not in current and client.indices.exists(index=i)]
    for index in unused:
        late = _writes_after(client, index, state.frozen_marks)
        if late:
            raise MigrationError(f"{index} received {late} writes after the alias left it; they exist only there. "
                                 "Copy them over (or delete them) before cleaning up.")
    for index in unused:
        client.indices.delete(index=index)
    state.status = "cleaned"
    state.message = f"deleted {', '.join(unused) or 'nothing'}"
    states.release(state)
    return unused


def _writes_after(client: OpenSearch, index: str, marks: dict[str, int]) -> int:
    """How many operations `index` processed after `marks` (0 when it has been frozen since)."""
    if not marks:
        return 0
    current = store.shard_checkpoints(client, index)
    if set(current) != set(marks):  # marks of the other index: this one was never the frozen one
        return 0
    return sum(max(0, current[shard] - marks[shard]) for shard in current)
