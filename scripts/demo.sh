#!/usr/bin/env bash
# The main job: set everything up, then run the segmentation node (nano profile)
# on a synthetic camera stream and write overlays + a latency summary to demo_output/.
# Extra arguments go to jetseg-demo (see `jetseg-demo --help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${JETSEG_VENV:-$ROOT/.venv}/bin/python" -m jetseg_ros.demo "$@"
