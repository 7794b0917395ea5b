"""Schemathesis against the live OpenAPI schema of a real `mmrag serve` (real node, real MiniLM, API keys on).

Every operation gets generated requests (valid and invalid); every check must pass: no 5xx, status codes,
content types, headers and bodies as the schema documents them, invalid data refused, valid data accepted,
auth enforced. Then the stateful links (POST /papers -> DELETE /papers/{id}). Bounded by example counts, not
time: about two minutes here. `benchmarks/fuzz_serve.sh` runs the large version (>= 10,000 requests).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import run_state_machine_as_test

from multi_modal_rag import OpenSearchManager
from multi_modal_rag.connection import ConnectionSettings, make_client
from multi_modal_rag.devtools.service import ServiceProcess
from test_serve import KEY, _papers

AUTH = {"X-API-Key": KEY, "Authorization": f"Bearer {KEY}"}  # both schemes, or schemathesis makes one up
EXAMPLES = 40  # per operation and phase
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzzed_service(opensearch_url: str, sample_path: Path) -> Iterator[ServiceProcess]:
    alias = f"fuzz-{uuid.uuid4().hex[:8]}"
    OpenSearchManager(alias, "minilm", ConnectionSettings(url=opensearch_url)).index_all(_papers(sample_path, 20))
    with ServiceProcess(["--index", alias, "--max-papers", "3", "--max-size", "20"],
                        env={"OPENSEARCH_URL": opensearch_url, "MMRAG_API_KEYS": KEY}) as running:
        yield running
        assert "Traceback" not in running.log()
    make_client(ConnectionSettings(url=opensearch_url)).indices.delete(index=f"{alias}*", expand_wildcards="all",
                                                                       ignore_unavailable=True)


@pytest.fixture(scope="module")
def api_schema(fuzzed_service: ServiceProcess):
    return schemathesis.openapi.from_url(f"{fuzzed_service.url}/openapi.json", headers=AUTH)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_holds_to_its_schema(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 7
    if mode is GenerationMode.NEGATIVE:  # only operations that take input can be sent invalid input
        operations = [op for op in operations if op.label in ("POST /search", "POST /papers", "DELETE /papers/{paper_id}")]
        assert len(operations) == 3
    for operation in operations:
        @FUZZ_SETTINGS
        @given(case=operation.as_strategy(generation_mode=mode))
        def holds(case) -> None:
            case.call_and_validate(headers=AUTH, timeout=120)

        holds()


def test_stateful_links_hold_to_the_schema(api_schema):
    class Workflow(api_schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case):
            return {"headers": AUTH, "timeout": 120}

    run_state_machine_as_test(Workflow, settings=settings(FUZZ_SETTINGS, max_examples=10, stateful_step_count=6))
