#!/usr/bin/env bash
# Install everything ddbench needs on a fresh Debian-like machine: the Fashion-MNIST package, Chromium (the site's
# browser test, tests/test_site.py) and the Python stack.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
APT=()
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || APT+=(dataset-fashion-mnist)
command -v chromium >/dev/null || APT+=(chromium)
if [ ${#APT[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT[@]}"
fi
python3 -m pip install -q --upgrade-strategy only-if-needed -e ".[dev]"
