"""The few error classes the package raises; each message is meant for the user."""

from __future__ import annotations

from typing import Any


class MMRagError(Exception):
    """Base class: a failure with a message that can be shown to a user as is."""


class ConnectionFailedError(MMRagError):
    """OpenSearch could not be reached, or answered in a way that shows a wrong URL."""


class AuthSetupError(ConnectionFailedError):
    """The configured authentication cannot be set up here: a missing package, no credentials, conflicting settings."""


class OpenSearchRequestError(MMRagError):
    """OpenSearch answered a request with an error (a rejected body, a full queue, a server fault)."""


class ModelNotAvailableError(MMRagError):
    """An embedding or reranking model cannot be loaded here."""


class IndexMismatchError(MMRagError):
    """The target index was built for another model, dimension or space type."""


class IndexNotFoundError(MMRagError):
    """The alias or index named by the user does not exist."""


class InputError(MMRagError, ValueError):
    """A bad input file or argument (not a bad record: those are reported per record)."""


class MigrationError(MMRagError):
    """A migration step failed; the alias was left where it was."""

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.details = details or {}
