#!/usr/bin/env bash
# Runs the whole test suite (sets up .venv first; see scripts/setup.sh).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k node -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
set +e
# Two pytest processes: the tests that fork DataLoader workers from the pytest process run in one
# where no inference engine (OpenVINO, ONNX Runtime) has started its thread pools; forking a
# process that holds those pools crashed it (SIGSEGV).
"${JETSEG_VENV:-$ROOT/.venv}/bin/python" -m pytest -m forks_workers "$@"
rc_forks=$?
"${JETSEG_VENV:-$ROOT/.venv}/bin/python" -m pytest -m 'not forks_workers' "$@"
rc_rest=$?
set -e
# pytest exits 5 when it collected no test: that is a broken setup, not a pass (one of the two
# runs may select nothing when arguments narrow the suite).
if [ "$rc_forks" -eq 5 ] && [ "$rc_rest" -eq 5 ]; then
  echo "ERROR: pytest collected no tests (exit 5): the test setup is broken" >&2
  exit 1
fi
for rc in "$rc_forks" "$rc_rest"; do
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
done
exit 0
