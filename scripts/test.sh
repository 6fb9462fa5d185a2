#!/usr/bin/env bash
# Runs the whole test suite (sets up .venv first; see scripts/setup.sh).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k node -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
set +e
"${JETSEG_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a broken setup, not a pass.
if [ "$rc" -eq 5 ]; then
  echo "ERROR: pytest collected no tests (exit 5): the test setup is broken" >&2
  exit 1
fi
exit "$rc"
