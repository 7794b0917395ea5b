"""The migration's copy spread over workers: one point-in-time slice of the old index each.

A slice is the papers OpenSearch's sliced scroll assigns to slice `i` of `n` (by `_id`), read through its own
point-in-time in paper-id order. The worker embeds them with the new model and writes them into the new index,
skipping every paper the new index already holds with the same content hash: the new index is the checkpoint, so
a slice run again (its worker was lost, or the migration is resumed) embeds only what is missing. The catch-up and
the hand-over's reconciliation then run in the migrating process as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import store
from ..connection import ConnectionSettings, make_client
from ..encoders import Encoder
from ..errors import MigrationError
from ..models import Device, Precision
from .sync import Copier, copy_changed


@dataclass(frozen=True)
class CopyUnit:
    """Slice `slice_id` of `slices` of `source`, copied into `target` with `model` at `precision`."""

    settings: ConnectionSettings
    source: str
    target: str
    model: str
    precision: Precision
    device: Device
    slice_id: int
    slices: int
    page_size: int = 128
    fence: str | None = None  # the run's alias on the target (see `run`): a worker of a fenced-off run writes nothing


def copy_slice(unit: CopyUnit, threads: int | None = None) -> int:
    """Copy one slice (in whatever process runs it); how many papers it embedded and wrote."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    client = make_client(unit.settings)
    spec = store.spec_of(client, unit.target)
    if spec is None:
        raise MigrationError(f"Index {unit.target!r} has no multi_modal_rag _meta.")
    with Encoder(unit.model, device=unit.device, precision=unit.precision) as encoder:
        copier = Copier(client, encoder, spec, unit.target, page_size=unit.page_size, fence=unit.fence)
        return sum(copy_changed(copier, page) for page in
                   store.scan_sources(client, unit.source, page_size=unit.page_size, slice=(unit.slice_id, unit.slices)))
