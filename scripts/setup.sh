#!/usr/bin/env bash
# Install everything ddbench needs on a fresh Debian-like machine: the Fashion-MNIST package and the Python stack.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi
python3 -m pip install -q --upgrade-strategy only-if-needed -e ".[dev]"
