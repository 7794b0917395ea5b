"""Deprecated: moved to `multi_modal_rag.store.template`; this path goes in the next release."""

import warnings

from .store.template import (  # noqa: F401
    TEMPLATE_VERSION,
    Engine,
    IndexSpec,
    SpaceType,
    build_index_body,
    knn_method,
    load_template,
    next_version,
    version_of,
    versioned_name,
)

warnings.warn("multi_modal_rag.index_body moved to multi_modal_rag.store.template; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
