#!/usr/bin/env bash
# Runs the test suite on a fresh machine: installs PostgreSQL's server when it is missing (the
# suite starts its own throw-away server), creates .venv, installs crmflow with its test
# dependencies, lints, and runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

have_pg() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
if ! have_pg; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing the PostgreSQL server for the test suite"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "PostgreSQL's server (initdb, pg_ctl) is not installed: its tests will be skipped" >&2
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check crmflow tests benchmarks examples
.venv/bin/mypy crmflow
.venv/bin/python -m pytest "$@"
