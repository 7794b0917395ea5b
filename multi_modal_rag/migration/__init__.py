"""Zero-downtime model migration: persisted state and lease, change capture, the run, verification, rollback."""

from .gate import GateRefused, GateReport, GateSpec, evaluate_gate
from .rollback import cleanup, rollback
from .run import GATE_STEP, PAGE_SIZE, STEPS, Migrator, Phase, ProgressCallback
from .state import STATE_INDEX, MigrationPlan, MigrationRoute, MigrationState, StateStore, load_state, save_state
from .verify import TargetCheck, VerificationReport, check_target, verify

__all__ = [
    "GATE_STEP", "GateRefused", "GateReport", "GateSpec", "evaluate_gate", "PAGE_SIZE", "STATE_INDEX", "STEPS", "MigrationPlan", "MigrationRoute", "MigrationState", "Migrator", "Phase",
    "ProgressCallback", "StateStore", "TargetCheck", "VerificationReport", "check_target", "cleanup", "load_state",
    "rollback", "save_state", "verify",
]
