#!/usr/bin/env bash
# Prepares a fresh machine for pdp: a virtualenv with the package and its dev tools,
# generated gRPC code, and the system packages the tests run for real (nats-server,
# chromium).
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

need_apt=()
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
# A headless browser renders the `pdp posture --html` page in its test.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install: ${need_apt[*]} (Debian: apt-get install ${need_apt[*]})" >&2
  fi
fi

stamp="$VENV/.pdp-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing pdp and its dev tools into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

if [ -f scripts/gen_proto.py ]; then
  "$VENV/bin/python" scripts/gen_proto.py
fi
