"""Deprecated: `from multi_modal_rag import OpenSearchManager`; this path goes in the next release."""

import warnings

from ..manager import OpenSearchManager  # noqa: F401

warnings.warn("multi_modal_rag.indexing is deprecated: import OpenSearchManager from multi_modal_rag; "
              "the old path goes in the next release", DeprecationWarning, stacklevel=2)
