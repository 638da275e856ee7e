#!/usr/bin/env bash
# Run here (any machine with pip and network), from the repository root: downloads into .whl/
# the wheels the GPU machine's image lacks (agentcore's dependencies that are not in it, and
# respx for the tests), for its Python 3.12 on x86-64. Add `/.whl/` to .git/info/exclude and
# carry `.whl` in the device call; bench/device/run.sh installs them there.
set -eu
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl gguf==0.19.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing_extensions==4.16.0 respx==0.23.1
ls .whl
