"""After a migration: move the alias back (carrying writes made since the swap), or delete the unused index.

Both take the migration's lease first (`StateStore.claim`: refused while its holder lives, taken once it
has lapsed), so a paused run that wakes finds its lease lost. A rollback also removes every run's fence
from the new index, so such a run can neither write there nor move the alias (see `run`).
"""

from __future__ import annotations

from opensearchpy import OpenSearch

from .. import store
from ..encoders import Encoder
from ..errors import MigrationError
from .state import UNFINISHED, MigrationState, StateStore, fence_alias
from .sync import Copier, reconcile


def rollback(client: OpenSearch, alias: str) -> MigrationState:
    """Point the alias back at the index it had before the last migration.

    After a swap, papers written, changed or deleted through the alias since then are carried back into the
    old index first (re-embedded with its model), under a write block on the new one that drains writes in flight.
    """
    states = StateStore(client, alias)
    state = states.claim("roll back")
    if not client.indices.exists(index=state.source_index):
        states.drop_lease()
        raise MigrationError(f"The previous index {state.source_index!r} was already cleaned up; cannot roll back.")
    if client.indices.exists(index=state.target_index):
        client.indices.update_aliases(body={"actions": [  # (404: there was none)
            {"remove": {"index": state.target_index, "alias": fence_alias(state.target_index)}}]}, params={"ignore": 404})
    current = store.alias_indices(client, alias)
    if state.target_index in current and client.indices.exists(index=state.target_index):
        source_spec = store.spec_of(client, state.source_index)
        state.frozen_marks = store.block_writes(client, state.target_index)
        states.save(state)  # still ours, right before the old index takes writes again
        store.set_write_block(client, state.source_index, False)
        with Encoder(source_spec.model, precision=source_spec.precision) as encoder:
            fixed = reconcile(Copier(client, encoder, source_spec, state.source_index), state.target_index)
        state.message = (f"alias {alias} -> {state.source_index}; carried back {len(fixed.source_only)} new, "
                         f"{len(fixed.changed)} changed and {len(fixed.target_only)} deleted papers")
    else:
        state.message = f"alias {alias} -> {state.source_index}"
    actions = [{"remove": {"index": i, "alias": alias}} for i in current if i != state.source_index]
    if state.source_index not in current:
        actions.append({"add": {"index": state.source_index, "alias": alias}})
    states.save(state)  # still ours, immediately before the alias moves and the block is lifted
    if actions:
        client.indices.update_aliases(body={"actions": actions})
    store.set_write_block(client, state.source_index, False)
    state.status = "rolled_back"
    states.release(state)
    return state


def cleanup(client: OpenSearch, alias: str) -> list[str]:
    """Delete the index the alias no longer uses after a finished or rolled-back migration, and any index a stale
    write re-created under the alias's name (born blocked and marked by the alias's guard template).

    Refused while that index holds writes made after it was frozen (they exist nowhere else).
    """
    states = StateStore(client, alias)
    _check_finished(states.read(), alias)
    state = states.claim("clean up")
    try:
        _check_finished(state, alias)
        current = set(store.alias_indices(client, alias))
        unused = [i for i in (state.source_index, state.target_index) if i not in current and client.indices.exists(index=i)]
        for index in unused:
            late = _writes_after(client, index, state.frozen_marks)
            if late:
                raise MigrationError(f"{index} received {late} writes after the alias left it; they exist only there. "
                                     "Copy them over (or delete them) before cleaning up.")
    except MigrationError:
        states.drop_lease()
        raise
    orphans = [i for i in store.versions(client, alias) if i not in current and i not in unused and store.is_orphan(client, i)]
    for index in unused + orphans:
        client.indices.delete(index=index)
    state.status = "cleaned"
    state.message = f"deleted {', '.join(unused + orphans) or 'nothing'}"
    states.release(state)
    return unused + orphans


def _check_finished(state: MigrationState | None, alias: str) -> None:
    if state is None:
        raise MigrationError(f"No migration of {alias!r} is recorded; nothing to clean up.")
    if state.status in UNFINISHED:
        raise MigrationError(f"The migration to {state.target_index} is unfinished ({state.status}); "
                             "resume it or roll it back first.")


def _writes_after(client: OpenSearch, index: str, marks: dict[str, int]) -> int:
    """How many operations `index` processed after `marks` (0 when it has been frozen since)."""
    if not marks:
        return 0
    current = store.shard_checkpoints(client, index)
    if set(current) != set(marks):  # marks of the other index: this one was never the frozen one
        return 0
    return sum(max(0, current[shard] - marks[shard]) for shard in current)
