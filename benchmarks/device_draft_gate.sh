#!/usr/bin/env bash
# Gated vs ungated Eagle3 on the real target (SmolLM2-135M-Instruct) at the GPU size, on the lent H200.
# The same code path as benchmarks/draft_gate_ablation.py on CPU; only the sizes and the device differ.
# Run on 2026-12-05 (benchmarks/real/gate-device.json, RESULTS.md): one seed takes about 400 s there
# for the chain alone (the reference decoder's per-token Python loops, not the GPU).
#
# The GGUF (98 MB) is larger than one device call carries (64 MiB), so it travels in two halves
# (../shared/REAL_MODEL.md). Prepare here, once (.devkit/ is listed in .git/info/exclude):
#   split -n 2 -d "$(.venv/bin/python -c 'from m3.model.real import gguf_path; print(gguf_path())')" /tmp/p
#   mkdir -p .devkit/a .devkit/b .devkit/whl && mv /tmp/p00 .devkit/a/ && mv /tmp/p01 .devkit/b/
#   (cd .devkit/whl && pip download --no-deps gguf==0.19.0 hydra-core==1.3.2 omegaconf==2.3.0 \
#       && pip wheel --no-deps antlr4-python3-runtime==4.9.3)
#   python benchmarks/draft_gate_ablation.py --target DIR --prompts-per-domain 24 --heldout-per-domain 6 \
#       --write-prompts .devkit/whl/prompts_real.json
# Then device calls, back to back (the machine keeps /tmp only while warm):
#   call 1, carry [.devkit/a, .devkit/whl]:  bash benchmarks/device_draft_gate.sh stage
#   call 2, carry [.devkit/b]:               bash benchmarks/device_draft_gate.sh run STEPS SEEDS...
#   call 3 if seeds are left:                bash benchmarks/device_draft_gate.sh collect SEEDS...
# `run` starts one process per seed, side by side (each seed's time is the decoder's Python loops on
# one core, so they share the GPU well), in their own process sessions so that they outlive the call;
# it returns after DEADLINE seconds (default 540) with the seeds done by then, and `collect` waits
# for the rest. Chain (k = 6) and tree (TREE_TOPK, default 4; 2k + 2 verified tokens) per seed.
set -euo pipefail
K=/tmp/m3kit
case "$1" in
  stage)
    mkdir -p $K && cp .devkit/a/* .devkit/whl/* $K/ && ls -la $K ;;
  run)
    steps=$2; shift 2
    cat $K/gguf_part00 .devkit/b/gguf_part01 > $K/smol.gguf
    echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $K/smol.gguf" | sha256sum -c
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $K/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    python3 -c "
from pathlib import Path
from m3.model.real import load_gguf
m, t = load_gguf(Path('$K/smol.gguf'))
m.save_pretrained('$K/real'); t.save_pretrained('$K/real')"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    for s in "$@"; do
      setsid nohup python3 benchmarks/draft_gate_ablation.py --target $K/real --prompts-json $K/prompts_real.json \
        --prompts-per-domain 24 --heldout-per-domain 6 --max-new-tokens 96 --k 6 --device cuda \
        --tree-topk "${TREE_TOPK:-4}" --steps "$steps" --seeds "$s" --threads 4 --out "$K/device-s$s.json" \
        > "$K/log-s$s" 2>&1 < /dev/null &
    done
    sleep 5; bash "$0" collect "$@" ;;
  collect)
    # wait for each seed's JSON (or the deadline), then hand back what is there
    shift
    end=$((SECONDS + ${DEADLINE:-540}))
    for s in "$@"; do
      while [ ! -f "$K/device-s$s.json" ] && [ $SECONDS -lt $end ]; do sleep 5; done
    done
    for s in "$@"; do
      cp "$K/device-s$s.json" "$OUT/" 2>/dev/null || { echo "seed $s not done:"; tail -3 "$K/log-s$s" || true; }
    done ;;
esac
