#!/usr/bin/env bash
# The GPU checks and benchmark on a lent GPU machine that has CUDA torch and transformers but no
# registry access, no Java and no TorchServe (../shared/device/README.md carries them there first:
# .device/a, then .device/b with the backbone). Runs, from the project root:
#   make gpu-check   ->  $OUT/gpu_check.json
#   make bench       ->  $OUT/bench.md, $OUT/bench.json  (wrk, 256 clients, fp16/fp32 sweep, variants)
# without make or a virtual environment: the machine's python3 runs the package from this folder.
# A user's GPU machine needs none of this: `make gpu-check` and `make bench` there.
set -uo pipefail
out=${OUT:-reports}
mkdir -p "$out"
[ -f .device/b/install ] && bash .device/b/install >"$out/install.log" 2>&1
export PATH=/opt/jre/bin:$PATH JAVA_HOME=/opt/jre PYTHONPATH=$PWD
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1
# The backbone lies in /opt/bert here, not in a pip package.
python3 - <<'PY'
import json
config = json.load(open("config.json"))
config["BERT_MODEL"] = "/opt/bert"
open("config.json", "w").write(json.dumps(config, indent=2) + "\n")
PY
python3 -c 'import torch, sentiment.ops.devices as d; print("GPUs:", d.gpu_count(), torch.cuda.get_device_name(0))'
command -v nvidia-smi >/dev/null || echo "no nvidia-smi: TorchServe will not see the GPU"
command -v wrk >/dev/null || echo "no wrk: the load comes from Python threads"

timeout "${CHECK_SECONDS:-120}" python3 -m sentiment.perf.gpu_check --out "$out" 2>&1 | tail -25
timeout "${BENCH_SECONDS:-420}" python3 -m sentiment.perf.bench --out "$out" --seconds "${LEVEL_SECONDS:-10}" \
  ${BENCH_ARGS:-} >"$out/bench.log" 2>&1
echo "bench exit $?"
grep -v "it/s\]" "$out/bench.log" | tail -60
