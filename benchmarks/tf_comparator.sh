#!/usr/bin/env bash
# Prepares the tf.data comparator of benchmarks/input_pipeline.py: TensorFlow conflicts with
# rew_jax's pins (protobuf, numpy), so it lives in its own virtual environment,
# benchmarks/.venv-tf, which the benchmark finds by itself and runs its tf.data side in.
#
#   bash benchmarks/tf_comparator.sh
#   .venv/bin/python benchmarks/input_pipeline.py --quick   # now with "baseline": tf.data
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
"$PYTHON" -m venv .venv-tf
.venv-tf/bin/python -m pip install -q --upgrade pip
.venv-tf/bin/python -m pip install -q "tensorflow-cpu==2.21.0" "pillow>=10.1"
.venv-tf/bin/python -c "import tensorflow as tf; print('tf.data comparator ready: tensorflow', tf.__version__)"
