#!/bin/sh
# The GPU checks of docs/speed.md in one call, for a session lent a GPU (about 6 minutes on an H100):
# the CUDA tests (fused path and CUDA-graph replay against eager), then the search step of the paper's
# network at batch 64 on every path, first and second order, and the other recipes' fast path.
# The device machine has PyTorch but not dnas: run from the repository root, e.g. through the device tool
#     sh benchmarks/gpu_check.sh            (writes $OUT/*.json and $OUT/tests.log; OUT defaults to benchmarks/out)
# then copy the rows into benchmarks/RESULTS.md with the device, date and command.
set -u
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 240 python3 -m pytest -q -p no:cacheprovider -x tests/test_cuda_graph.py tests/test_fused.py \
    -k "cuda or replay or replayed or eager" 2>&1 | tee "$OUT/tests.log" | tail -25
timeout 200 python3 benchmarks/search_step.py --methods darts-v1,darts-v2 --paths readable,fused,graph,graph-bf16 \
    --steps 10 --no-results > "$OUT/step.json" 2> "$OUT/step.err"; tail -3 "$OUT/step.err"
python3 -c "
import json; r = json.load(open('$OUT/step.json'))
print(r['device'], r['torch'], 'batch', r['batch_size'])
for x in r['results']:
    print(f\"{x['method']:10} {x['path']:11} {x['ms_per_step_median']:8} ms  {x['peak_memory_gb']} GB  x{x['speedup_over_readable']}  replayed {x['replayed']}\")"
timeout 120 python3 benchmarks/search_step.py --methods pc-darts,sdarts-rs,drnas,fair-darts --paths fused,graph \
    --steps 5 --no-results > "$OUT/step_recipes.json" 2> "$OUT/step_recipes.err"; tail -3 "$OUT/step_recipes.err"
python3 -c "
import json; r = json.load(open('$OUT/step_recipes.json'))
for x in r['results']:
    print(f\"{x['method']:10} {x['path']:11} {x['ms_per_step_median']:8} ms  {x['peak_memory_gb']} GB  replayed {x['replayed']}\")"
