#!/usr/bin/env bash
# From a fresh clone to a hybrid search: set up, start OpenSearch, index the sample papers, query.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if [ -n "${OPENSEARCH_URL:-}" ]; then
  echo "== using OpenSearch at OPENSEARCH_URL"
elif docker info >/dev/null 2>&1; then
  echo "== starting OpenSearch with docker compose"
  docker compose up -d --wait opensearch
else
  echo "== no Docker engine: starting a local OpenSearch node"
  .venv/bin/mmrag node start
fi

.venv/bin/mmrag index data/sample_papers.jsonl --index papers --model minilm --pending
.venv/bin/mmrag search "${1:-vitamin B12 deficiency and homocysteine levels}" --index papers --mode hybrid --size 5
