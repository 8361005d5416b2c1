#!/usr/bin/env bash
# One venv for benchmarks/bench_peers.py: adarec, peft and AdapterHub `adapters` side by side on
# the same torch and the same transformers. AdapterHub pins transformers (adapters 1.3.0 wants
# transformers~=4.57.6), so this cannot be the project's main venv (transformers 5.x).
#
#   bash benchmarks/peers_env.sh            # creates .venv-peers (git-ignored)
#   .venv-peers/bin/python benchmarks/bench_peers.py --layers 2 --rounds 2
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-peers}
PY=${PYTHON:-python3.11}
ADAPTERS=${ADAPTERS_VERSION:-1.3.0}
TRANSFORMERS=${TRANSFORMERS_SPEC:-transformers~=4.57.6}
PEFT=${PEFT_VERSION:-0.21.2}

"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
# torch first, from the local CPU wheel; the constraint file stops anything upgrading it later.
"$PIP" install -q torch==2.13.0
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" > "$constraints"
"$PIP" install -q -c "$constraints" "$TRANSFORMERS" "adapters==$ADAPTERS" "peft==$PEFT" \
  "safetensors>=0.4" "einops>=0.7" "pytest>=8" "hypothesis>=6.100"
# adarec without its dependencies, so it cannot pull transformers 5.x back in.
"$PIP" install -q --no-deps -e .
"$VENV/bin/python" - <<'PY'
import adapters, peft, torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"adapters {adapters.__version__}, peft {peft.__version__}")
assert torch.__version__.startswith("2.13.0"), "torch was replaced"
PY
