#!/usr/bin/env bash
# Runs launch/plot.py with a Python that has matplotlib (the system one when the default
# python3 lacks it); warns instead of failing when there is none.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for py in python3 /usr/bin/python3; do
  if command -v "$py" >/dev/null && "$py" -c 'import matplotlib' 2>/dev/null; then
    exec "$py" "$ROOT/launch/plot.py" "$@"
  fi
done
echo "lctx: matplotlib not found (apt-get install python3-matplotlib); skipping the plot" >&2
