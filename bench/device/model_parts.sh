#!/usr/bin/env bash
# The real SmolLM2 (98 MB) does not fit one device call's 64 MiB working tree, so it travels in
# two: run here, from the repository root, after `agentcore` has pulled it (make demo does):
#   bash bench/device/model_parts.sh
# writes .models-a/smollm2.part-a and .models-b/smollm2.part-b (add `/.models-a/` and
# `/.models-b/` to .git/info/exclude). Call 1 carries [".whl", ".peers", ".models-a"] and does
# its work; call 2, at once (the machine goes back 30 s after a call), carries [".whl",
# ".peers", ".models-b"]: a carried path is replaced there, one not named is kept, so both
# halves are on the machine, and run.sh's `lookup` step joins them and checks the sha256.
set -eu
src=$(.venv/bin/python -c "from agentcore.model_cache import resolve_model; print(resolve_model('smollm2'))")
mkdir -p .models-a .models-b
half=$(( $(stat -c %s "$src") / 2 + 1 ))
head -c "$half" "$src" > .models-a/smollm2.part-a
tail -c +$(( half + 1 )) "$src" > .models-b/smollm2.part-b
ls -l .models-a .models-b
