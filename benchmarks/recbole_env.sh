#!/usr/bin/env bash
# A venv for benchmarks/bench_recbole.py: RecBole 1.2.1's SASRec beside adarec's on the same
# torch. RecBole 1.2.1 still uses numpy aliases removed in numpy 1.24 (np.float, np.long) and
# predates pandas 2, so it cannot share adarec's main venv (numpy 2.x). It is installed with
# --no-deps plus only what its SASRec path imports (no ray, hyperopt, lightgbm, xgboost, ...).
#
#   bash benchmarks/recbole_env.sh           # creates .venv-recbole (git-ignored)
#   .venv-recbole/bin/python benchmarks/bench_recbole.py recbole --out runs/recbole
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-recbole}
PY=${PYTHON:-python3.11}

"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
# torch first, from the local CPU wheel; the constraint file stops anything replacing it later.
"$PIP" install -q torch==2.13.0
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" > "$constraints"
"$PIP" install -q -c "$constraints" "numpy==1.23.5" "pandas==1.5.3" "scipy==1.10.1" \
  "pyyaml>=5.1" "tqdm>=4.48" "colorlog==4.7.2" "colorama==0.4.4" "texttable>=0.9" \
  "scikit-learn==1.3.2" "tabulate>=0.8.10" "psutil>=5.9" "tensorboard>=2.5" \
  "safetensors>=0.4" "einops>=0.7" \
  "transformers>=4.40"
"$PIP" install -q --no-deps "recbole==1.2.1"
# adarec (its imports need transformers, above) without its dependencies: its metrics score
# RecBole's model under both protocols.
"$PIP" install -q --no-deps -e .
"$VENV/bin/python" - <<'PY'
import numpy, recbole, torch
from recbole.model.sequential_recommender import SASRec  # noqa: F401  (the path we use)
from adarec.rec.metrics import full_ranking_ranks  # noqa: F401
print(f"torch {torch.__version__}, numpy {numpy.__version__}, recbole {recbole.__version__}")
assert torch.__version__.startswith("2.13.0"), "torch was replaced"
PY
