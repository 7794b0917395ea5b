"""multi_modal_rag: the search backbone of an academic research assistant.

Indexes papers into OpenSearch with sentence-transformers embeddings, serves hybrid
(BM25 + kNN) search with optional reranking, and migrates a live index to a new model.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
