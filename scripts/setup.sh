#!/usr/bin/env bash
# Installs what building and testing Eddy needs on a fresh Debian machine. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# curl: the HTTP(S) tests; postgresql: a real server the psql tests compare Eddy with;
# libpostgresql-jdbc-java: pgjdbc for the driver tests, run by a JDK; node and npm:
# node-postgres and dbmate.
# strace: the test that checks files are synced before the commits that name them.
for pkg in cmake clang libclang-dev libcurl4-openssl-dev curl postgresql-client postgresql \
           libpostgresql-jdbc-java strace; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
command -v javac >/dev/null || need_apt+=(default-jdk-headless)
command -v npm >/dev/null || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Python client libraries for the client tests, kept inside the repo (.tools/python).
if ! PYTHONPATH=.tools/python python3 -c 'import psycopg, psycopg2, asyncpg' 2>/dev/null; then
  echo "setup: installing psycopg, psycopg2 and asyncpg into .tools/python"
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/python \
    'psycopg[binary]==3.2.*' 'psycopg2-binary==2.9.*' 'asyncpg==0.30.*'
fi

# SQLAlchemy and Alembic for the ORM and migration tests, beside the drivers.
if ! PYTHONPATH=.tools/python python3 -c 'import sqlalchemy, alembic' 2>/dev/null; then
  echo "setup: installing SQLAlchemy and Alembic into .tools/python"
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/python \
    'SQLAlchemy==2.0.*' 'alembic==1.16.*'
fi

# node-postgres, knex and dbmate (its npm package carries the binary) for the client and
# migration tests, kept in .tools/node.
if [ ! -d .tools/node/node_modules/pg ] || [ ! -x .tools/node/node_modules/.bin/dbmate ] \
   || [ ! -d .tools/node/node_modules/knex ]; then
  echo "setup: installing node-postgres, knex and dbmate into .tools/node"
  mkdir -p .tools/node
  [ -f .tools/node/package.json ] || echo '{"private": true}' > .tools/node/package.json
  (cd .tools/node && npm install --silent --no-audit --no-fund pg@8 dbmate@2 knex@3)
fi

# ONNX Runtime for models (loaded at run time from the onnxruntime wheel: ort 2.0.0-rc.15
# needs 1.31), and what the test-model builder uses (onnx, scikit-learn, skl2onnx; protobuf
# below 6, which skl2onnx 1.19's tree converters need), kept in .tools/onnx.
if ! PYTHONPATH=.tools/onnx python3 -c 'import onnx, onnxruntime, numpy, sklearn, skl2onnx' 2>/dev/null; then
  echo "setup: installing onnxruntime, onnx, scikit-learn and skl2onnx into .tools/onnx"
  python3 -m pip install --quiet --disable-pip-version-check --upgrade --target .tools/onnx \
    'onnxruntime==1.31.1' 'onnx==1.19.*' 'numpy<3' 'scikit-learn==1.7.*' 'skl2onnx==1.19.*' \
    'protobuf==5.29.*'
fi

# An S3-compatible server for the object-store tests (moto's standalone server), kept in
# .tools/moto.
if ! PYTHONPATH=.tools/moto python3 -c 'import moto.server, flask' 2>/dev/null; then
  echo "setup: installing moto (S3-compatible test server) into .tools/moto"
  python3 -m pip install --quiet --disable-pip-version-check --upgrade --target .tools/moto \
    'moto[server]==5.*'
fi

# A real Kafka-compatible broker for the streaming tests: Tansu, built from crates.io once per
# machine (about 10 CPU-minutes) and kept in $CARGO_HOME/bin.
tansu_bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
if [ ! -x "$tansu_bin" ]; then
  echo "setup: installing tansu (Kafka-compatible broker) into $tansu_bin"
  CARGO_TARGET_DIR="${CARGO_HOME:-$HOME/.cargo}/tansu-build" \
    cargo install tansu --version 0.6.0 --locked --features dynostore --quiet
  rm -rf "${CARGO_HOME:-$HOME/.cargo}/tansu-build"
fi

# sqlx-cli for the migration tests, built from crates.io once per machine (about 5
# CPU-minutes) and kept in $CARGO_HOME/bin.
sqlx_bin="${CARGO_HOME:-$HOME/.cargo}/bin/sqlx"
if [ ! -x "$sqlx_bin" ]; then
  echo "setup: installing sqlx-cli into $sqlx_bin"
  CARGO_TARGET_DIR="${CARGO_HOME:-$HOME/.cargo}/sqlx-build" \
    cargo install sqlx-cli --version 0.8.6 --locked --no-default-features \
      --features rustls,postgres --quiet
  rm -rf "${CARGO_HOME:-$HOME/.cargo}/sqlx-build"
fi

# refinery_cli for the migration tests, likewise.
refinery_bin="${CARGO_HOME:-$HOME/.cargo}/bin/refinery"
if [ ! -x "$refinery_bin" ]; then
  echo "setup: installing refinery_cli into $refinery_bin"
  CARGO_TARGET_DIR="${CARGO_HOME:-$HOME/.cargo}/refinery-build" \
    cargo install refinery_cli --version 0.10.0 --locked --no-default-features \
      --features postgresql --quiet
  rm -rf "${CARGO_HOME:-$HOME/.cargo}/refinery-build"
fi
