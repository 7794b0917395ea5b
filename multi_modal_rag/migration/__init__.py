"""Zero-downtime model migration: the persisted state, the run, and the checks before the swap."""

from .run import CATCH_UP_PASSES, PAGE_SIZE, Migrator, Phase, ProgressCallback, cleanup, rollback
from .state import STATE_INDEX, MigrationPlan, MigrationRoute, MigrationState, load_state, save_state
from .verify import VerificationReport, verify

__all__ = [
    "CATCH_UP_PASSES", "PAGE_SIZE", "STATE_INDEX", "MigrationPlan", "MigrationRoute", "MigrationState", "Migrator",
    "Phase", "ProgressCallback", "VerificationReport", "cleanup", "load_state", "rollback", "save_state", "verify",
]
