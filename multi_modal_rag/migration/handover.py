"""The hand-over: block the old index (draining writes in flight), settle the new one to it, verify, swap.

Only the lease holder acts here, and it checks the lease (a conditional state save) right before each act
that another holder could not undo: blocking, lifting the block, moving the alias. The alias moves in one
`_aliases` call that also removes the run's fence with `must_exist`, so a run whose fence was removed (by
a `--resume` or a rollback that took its lease) cannot move the alias even if it was paused after its check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from opensearchpy import OpenSearch
from opensearchpy.exceptions import TransportError

from .. import store
from ..errors import MigrationError
from .state import MigrationState, StateStore
from .sync import Copier, Differences, Prepared, reconcile, settle
from .verify import TargetCheck, verify

logger = logging.getLogger(__name__)

SETTLE_TRIES = 3  # a hand-over whose checkpoints moved under the block (someone lifted it) settles again


def count_fixed(state: MigrationState, fixed: Differences) -> None:
    state.caught_up += len(fixed.source_only) + len(fixed.changed)
    state.deleted += len(fixed.target_only)


@dataclass
class HandOver:
    client: OpenSearch
    states: StateStore
    state: MigrationState
    on_step: Callable[[str], None]

    @property
    def alias(self) -> str:
        return self.state.alias

    def block(self) -> None:
        """Block writes to the old index, between two lease checks. If the lease was lost just before the block
        landed, lift it unless the new holder keeps one (it is handing over or swapped), so no writer waits on a
        run that stopped."""
        self.states.save(self.state)
        store.block_writes(self.client, self.state.source_index)
        self.on_step("writes-blocked")
        self.state.status = "handover"
        try:
            self.states.save(self.state)
        except MigrationError:
            current = self.states.read()
            if current is None or current.status not in ("handover", "swapped"):
                store.set_write_block(self.client, self.state.source_index, False)
            raise

    def settle(self, copier: Copier, checked: TargetCheck) -> dict[str, int]:
        """Under the block: the new index settled to the frozen old one and verified; the checkpoints it froze at."""
        state = self.state
        for _ in range(SETTLE_TRIES):
            frozen = store.block_writes(self.client, state.source_index)  # again after a resume or a lifted block
            if state.terms:
                fixed = settle(copier, state.source_index, Prepared(state.marks, state.terms, state.buckets, Differences()))
            else:  # a hand-over begun by an earlier version, without `prepare`'s marks: the whole merge
                fixed = reconcile(copier, state.source_index)
                fixed.source_papers = store.count_papers_and_chunks(self.client, state.source_index)[0]
            count_fixed(state, fixed)
            self.on_step("reconciled")
            report = verify(self.client, state.source_index, state.target_index, fixed, checked)
            state.verification = report.to_dict()
            self.on_step("verified")
            if not report.ok:
                self.fail(report.problems, report.to_dict())
            if (store.shard_checkpoints(self.client, state.source_index) == frozen
                    and store.write_blocked(self.client, state.source_index)):
                return frozen
            logger.warning("writes reached %s under its block (lifted by another process?); settling again",
                           state.source_index)
            state.marks = frozen
        self.fail([f"writes kept reaching {state.source_index} under its write block"], {})

    def swap(self, frozen: dict[str, int]) -> None:
        """Move the alias (and drop the fence) in one atomic call, right after a last lease check."""
        state = self.state
        state.frozen_marks = frozen
        self.states.save(state)
        self.on_step("swap-ready")
        try:
            self.client.indices.update_aliases(body={"actions": [
                {"remove": {"index": state.source_index, "alias": self.alias, "must_exist": True}},
                {"add": {"index": state.target_index, "alias": self.alias}},
                {"remove": {"index": state.target_index, "alias": state.fence, "must_exist": True}},
            ]})
        except TransportError as exc:
            if exc.status_code == 404:
                raise MigrationError(f"This run was fenced off {state.target_index} ({state.fence} is gone): another "
                                     f"process took the migration of {self.alias!r} over; the alias was not moved.") from exc
            raise
        self.on_step("alias-moved")
        late = sum(store.shard_checkpoints(self.client, state.source_index).values()) - sum(frozen.values())
        if late:
            logger.error("%d writes reached %s between the last check and the swap; they are kept there, and "
                         "`mmrag migrate cleanup` refuses to delete it while they are", late, state.source_index)
            state.verification["late_writes"] = late

    def fail(self, problems: list[str], details: dict[str, Any]) -> None:
        """Give up before the swap: the old index takes writes again (lifted by the lease holder only)."""
        state = self.state
        state.status, state.message = "failed", "; ".join(problems)
        self.states.save(state)
        store.set_write_block(self.client, state.source_index, False)
        self.states.release(state)
        raise MigrationError(f"Verification failed, alias {self.alias!r} not moved: {state.message}", details)
