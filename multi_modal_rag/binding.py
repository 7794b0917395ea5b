"""An alias on a node and the model used with it: what the write and the read side share.

A binding created with a model writes and reads with that model and refuses an index of another.
A binding created without one takes the model recorded in the index behind the alias. Either way
the binding remembers which concrete index its model matches (`index`), and `rebind()` follows the
alias when a migration swapped it: a model-less binding loads the new index's model, a binding with a
model refuses an index of another one. Writers write to that concrete index, never to the alias, so
no vector of one model can land in an index of another.

Precision (fp32, fp16, bf16, int8) goes with the model: a binding given one refuses an index of another,
a binding without one (a reader, `mmrag search`) takes the index's, and fp32 for a new index.

A projection (`--reduce-dim`) goes with the model too: every binding takes the index's, loaded from
`store.projections`. A binding given `reduce_dim` refuses an index reduced to another dimension (or not
reduced), and creates a new index only with a projection fitted first (`fit_projection`).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from opensearchpy import OpenSearch

from . import store
from .connection import ConnectionSettings, make_client
from .documents import Paper
from .encoders import Encoder, fit_on_papers
from .errors import IndexMismatchError, IndexNotFoundError
from .models import Device, Precision, canonical_name
from .projection import Projection, check_reduce_dim
from .store import IndexSpec

logger = logging.getLogger(__name__)


class AliasBinding:
    def __init__(
        self,
        alias: str,
        model: str | None = None,
        settings: ConnectionSettings | None = None,
        client: OpenSearch | None = None,
        *,
        encode_batch_size: int = 32,
        device: Device = "auto",
        precision: Precision | None = None,
        processes: int = 1,
        spec_overrides: dict[str, Any] | None = None,
        shards: int | None = None,
        replicas: int | None = None,
        encoder: Encoder | None = None,
        reduce_dim: int | None = None,
    ):
        self.alias = alias
        if encoder is not None:  # a model already loaded (the migration's new model, for its relevance gate)
            model, precision, device = encoder.name, encoder.precision, encoder.device
        self.model_name = model
        self.follows_index_model = model is None
        self.precision = precision  # None until the index tells it (or, with no index yet, fp32)
        self.follows_index_precision = precision is None
        self.device = device
        self.processes = processes
        self.settings = settings or ConnectionSettings.from_env()
        self._client = client
        self._encoder: Encoder | None = encoder
        self.index: str | None = None  # the concrete index this binding's model was checked against
        self.index_spec: IndexSpec | None = None  # what that index records
        self.encode_batch_size = encode_batch_size
        self.spec_overrides = spec_overrides or {}
        self.reduce_dim = reduce_dim  # None: whatever the index has
        # the index's projection, or the one fitted for a new index
        self.projection: Projection | None = encoder.projection if encoder is not None else None
        # settings of the index this binding creates (the template's 1 shard, 0 replicas suit one node)
        self.index_settings = {key: value for key, value in (("number_of_shards", shards), ("number_of_replicas", replicas))
                               if value is not None}

    @property
    def url(self) -> str:
        """The node's URL without credentials, for messages."""
        return self.settings.safe_url

    @property
    def client(self) -> OpenSearch:
        """The OpenSearch client, created on first use."""
        if self._client is None:
            self._client = make_client(self.settings)
        return self._client

    @property
    def encoder(self) -> Encoder:
        """The embedding model, loaded on first use: the one given, else the index's own; at the precision
        given, else the index's (fp32 when there is no index yet)."""
        if self._encoder is None:
            if self.model_name is None:
                self.model_name = self._recorded_model()
            if self.precision is None:
                self.rebind()
                self.precision = self.precision or "fp32"
            self._encoder = Encoder(self.model_name, batch_size=self.encode_batch_size, device=self.device,
                                    precision=self.precision, processes=self.processes)
            if self.projection is not None and self.projection.model == self._encoder.model_identity:
                self._encoder.use_projection(self.projection)  # (another model: refused by the spec check)
        return self._encoder

    def close(self) -> None:
        """Stop the encoder's worker processes, if it started any (`processes` > 1)."""
        if self._encoder is not None:
            self._encoder.close()

    def _drop_encoder(self) -> None:
        old, self._encoder = self._encoder, None
        if old is not None:
            old.close()

    @property
    def loaded_encoder(self) -> Encoder | None:
        """The model if it is loaded, without loading it."""
        return self._encoder

    def _recorded_model(self) -> str:
        self.rebind()
        if self.index_spec is None:
            raise IndexNotFoundError(f"No multi_modal_rag index behind {self.alias!r} to take the model from; pass --model.")
        return self.index_spec.model

    def rebind(self) -> str | None:
        """Resolve the alias again and take the index behind it: its spec, and its model if this binding follows it.

        Raises IndexMismatchError when this binding's own model or precision does not match the index.
        """
        with store.translated(self.url):
            index = store.resolve_alias(self.client, self.alias)
            spec = store.spec_of(self.client, index) if index else None
        if index != self.index:
            logger.info("alias %s now points at %s", self.alias, index)
        self.index, self.index_spec = index, spec
        if spec is None:
            return index
        if self.follows_index_precision and self.precision != spec.precision:
            if self.precision is not None:
                logger.info("index %s is %s; loading the model at that precision", index, spec.precision)
                self._drop_encoder()
            self.precision = spec.precision
        elif self.follows_index_model and self.precision != spec.precision:  # the index's model at another precision
            raise IndexMismatchError(
                f"Index {index!r} (alias {self.alias!r}) is {spec.precision}, this run asks for {self.precision}: "
                f"use --precision {spec.precision}, or leave it out to take the index's."
            )
        self._take_projection(index, spec)
        if self.model_name is None:
            return index
        if self.follows_index_model:
            if canonical_name(self.model_name) != spec.model:
                logger.info("index %s uses %s; loading it", index, spec.model)
                self.model_name = spec.model
                self._drop_encoder()
        else:
            problems = self.spec().mismatches(spec)
            if problems:
                raise IndexMismatchError(
                    f"Index {index!r} (alias {self.alias!r}) does not match this model: {'; '.join(problems)}. "
                    f"{self._fix(spec)}"
                )
        return index

    def _take_projection(self, index: str, spec: IndexSpec) -> None:
        """The index's projection, loaded once (it never changes under its id); refused against `reduce_dim`."""
        if self.reduce_dim is not None and (spec.projection is None or spec.dimension != self.reduce_dim):
            has = f"reduced to {spec.dimension} dimensions" if spec.projection else f"not reduced ({spec.dimension} dimensions)"
            raise IndexMismatchError(
                f"Index {index!r} (alias {self.alias!r}) is {has}; this run asks for --reduce-dim {self.reduce_dim}. "
                f"Leave --reduce-dim out to use the index's, or migrate: "
                f"`mmrag migrate --index {self.alias} --to-model {self.model_name or spec.model} --reduce-dim {self.reduce_dim}`."
            )
        if (self.projection.id if self.projection else None) != spec.projection:
            if spec.projection is None:
                self.projection = None
            else:
                with store.translated(self.url, f"loading the projection of {index}"):
                    self.projection = store.load_projection(self.client, spec.projection, index=index)
            logger.info("index %s: projection %s", index, spec.projection)
        if self._encoder is not None and self._encoder.projection is not self.projection:
            if self.projection is not None and self._encoder.model_identity != self.projection.model:
                return  # the index's model changed too: below, the encoder is dropped and made again with it
            self._encoder.use_projection(self.projection)

    def fit_projection(self, papers: Iterable[Paper]) -> Projection | None:
        """With `reduce_dim` and no index behind the alias yet: fit the new index's projection on `papers` (the
        first of the input) and use it. An existing index keeps its own (None is returned)."""
        if self.reduce_dim is None or self.resolve() is not None:
            return None
        check_reduce_dim(self.reduce_dim, self.encoder.model_dimension)
        self.encoder.use_projection(None)
        projection = fit_on_papers(self.encoder, papers, self.reduce_dim, self.encoder.spec(**self.spec_overrides))
        self.projection = projection
        self.encoder.use_projection(projection)
        return projection

    def _fix(self, spec: IndexSpec) -> str:
        migrate = f"mmrag migrate --index {self.alias} --to-model {self.model_name}"
        if canonical_name(self.model_name) == spec.model and self.precision != spec.precision:
            return (f"Use the index's precision (--precision {spec.precision}, or leave it out), or migrate it: "
                    f"`{migrate} --to-precision {self.precision}`.")
        return f"Use the index's model, or migrate it: `{migrate}`."

    def spec(self) -> IndexSpec:
        """The index spec for this binding's model."""
        return self.encoder.spec(**self.spec_overrides)

    def ping(self) -> None:
        """Check the node answers; raise ConnectionFailedError naming the URL otherwise."""
        with store.translated(self.url):
            store.ping(self.client, self.url)

    def resolve(self) -> str | None:
        """The concrete index behind the alias (or the index of that name), or None."""
        with store.translated(self.url):
            return store.resolve_alias(self.client, self.alias)

    def create_index(self, spec: IndexSpec | None = None, *, attach_alias: bool = True) -> str:
        """Create the next `{alias}-vN` index for `spec`, and point the alias at it."""
        spec = spec or self.spec()
        if self.reduce_dim is not None and spec.projection is None:
            raise IndexMismatchError(f"--reduce-dim {self.reduce_dim}: a new index needs its projection fitted first "
                                     "(AliasBinding.fit_projection on the first papers)")
        with store.translated(self.url, f"creating an index for {self.alias}"):
            if spec.projection is not None:  # stored first: a reader of the new index must find it
                store.save_projection(self.client, self.projection)
            store.guard_versions(self.client, self.alias)  # before any index of the alias exists to be deleted
            name = store.next_index_name(self.client, self.alias)
            store.create_index(self.client, name, spec, settings=self.index_settings, alias=self.alias if attach_alias else None)
        logger.info("created index %s for %s (%d dims)", name, spec.model, spec.dimension)
        return name

    def ensure_index(self) -> str:
        """The index to write into: created on first use, else checked against this model."""
        self.ping()
        if self.resolve() is None:
            self.index = self.create_index(self.spec())
            with store.translated(self.url):
                self.index_spec = store.spec_of(self.client, self.index)
            return self.index
        index = self.rebind()
        if self.index_spec is None:
            raise IndexMismatchError(f"Index {index!r} was not created by multi_modal_rag (no _meta); not writing into it.")
        if self.index_settings:
            self._apply_index_settings(index)
        return index

    def _apply_index_settings(self, index: str) -> None:
        """Replicas of an existing index change in place; its shards cannot, short of a migration."""
        with store.translated(self.url, f"reading the settings of {index}"):
            current = store.inherited_settings(self.client, index)
        shards = self.index_settings.get("number_of_shards")
        if shards is not None and int(current["number_of_shards"]) != shards:
            raise IndexMismatchError(
                f"Index {index!r} has {current['number_of_shards']} primary shard(s), not {shards}; the shards of an existing "
                f"index cannot change. Leave --shards out, or move to a new index: "
                f"`mmrag migrate --index {self.alias} --to-model {self.model_name} --shards {shards}`."
            )
        replicas = self.index_settings.get("number_of_replicas")
        if replicas is not None and int(current.get("number_of_replicas", 0)) != replicas:
            with store.translated(self.url, f"setting the replicas of {index}"):
                self.client.indices.put_settings(index=index, body={"index": {"number_of_replicas": replicas}})
            logger.info("index %s now has %d replica(s)", index, replicas)
