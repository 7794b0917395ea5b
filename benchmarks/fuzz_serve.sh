#!/usr/bin/env bash
# The large schemathesis run of `mmrag serve` (issue 22): every phase (examples, coverage, fuzzing, stateful links),
# valid and invalid data, every check, against a real service on the node at $OPENSEARCH_URL with API keys on.
# Usage: OPENSEARCH_URL=http://127.0.0.1:9200 bash benchmarks/fuzz_serve.sh [MAX_EXAMPLES]   (default 1500)
# Prints the requests sent, the 5xx answers and schemathesis's verdict; the NDJSON events are in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EXAMPLES=${1:-1500}
OUT=${OUT:-/tmp/mmrag-fuzz}
KEY=fuzz-key-0123456789abcdef
ALIAS=fuzz-bench-$$
PORT=$($PY -c "from multi_modal_rag.devtools.service import free_port; print(free_port())")
mkdir -p "$OUT"
$PY - "$ALIAS" <<'PY'
import sys
from itertools import islice
from multi_modal_rag import OpenSearchManager
from multi_modal_rag.connection import ConnectionSettings
from multi_modal_rag.documents import read_papers
OpenSearchManager(sys.argv[1], "minilm", ConnectionSettings.from_env()).index_all(list(islice(read_papers("data/sample_papers.jsonl"), 40)))
PY
MMRAG_API_KEYS=$KEY $PY -m multi_modal_rag serve --index "$ALIAS" --port "$PORT" --max-papers 5 > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER; $PY -c "from multi_modal_rag.connection import ConnectionSettings, make_client; make_client(ConnectionSettings.from_env()).indices.delete(index=\"$ALIAS*\", ignore_unavailable=True)"' EXIT
until curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null; do sleep 1; done
set +e
.venv/bin/st run "http://127.0.0.1:$PORT/openapi.json" -H "X-API-Key: $KEY" -H "Authorization: Bearer $KEY" --checks all --mode all \
    --phases examples,coverage,fuzzing,stateful -n "$EXAMPLES" --generation-deterministic --request-timeout 120 \
    --report ndjson --report-ndjson-path "$OUT/events.ndjson" > "$OUT/st.txt" 2>&1
STATUS=$?
set -e
tail -25 "$OUT/st.txt"
$PY - "$OUT/events.ndjson" <<'PY'
import json, sys
from collections import Counter
statuses = Counter()
for line in open(sys.argv[1]):
    for match in __import__("re").finditer(r'"status_code": ?(\d{3})', line):
        statuses[int(match.group(1))] += 1
print(f"requests: {sum(statuses.values())}, >= 500: {sum(n for s, n in statuses.items() if s >= 500)}, by status: {dict(sorted(statuses.items()))}")
PY
grep -c Traceback "$OUT/serve.log" || true
exit $STATUS
