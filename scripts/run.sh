#!/usr/bin/env bash
# `make run`: checks the bundled example policies, then runs pdp on them with the
# embedded defaults (a local dev CA in .pdp-state/, audit to a local file).
set -euo pipefail
cd "$(dirname "$0")/.."
PDP=.venv/bin/pdp
POLICIES=${PDP_POLICIES:-policies}

"$PDP" validate --policies "$POLICIES"
"$PDP" test --policies "$POLICIES"
if "$PDP" serve --help >/dev/null 2>&1; then
  exec "$PDP" serve --dev --policies "$POLICIES" "$@"
fi
"$PDP" check --policies "$POLICIES" "$POLICIES/examples/requests/support-get-ticket.json"
