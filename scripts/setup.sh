#!/usr/bin/env bash
# Installs what building and testing Eddy needs on a fresh Debian machine. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in cmake clang libclang-dev libcurl4-openssl-dev postgresql-client; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Python client libraries for the client tests, kept inside the repo (.tools/python).
if ! PYTHONPATH=.tools/python python3 -c 'import psycopg' 2>/dev/null; then
  echo "setup: installing psycopg into .tools/python"
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/python 'psycopg[binary]==3.2.*'
fi
