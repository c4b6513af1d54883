#!/bin/sh
# The GPU checks of docs/speed.md in one call, for a session lent a GPU (about 7 minutes on an H100, at
# most 9.5 by its timeouts: give the call timeout_s 600): the CUDA tests (fused path and CUDA-graph replay
# against eager), the search step of the paper's network at batch 64 on every path (first and second
# order, and other recipes' paths, GDAS's readable against fused among them), the top kernels of an eager
# fused step (profile_step.py), and an end-to-end search on real CIFAR-10. The lent machine has PyTorch
# but neither dnas nor the data; first, here:
#     mkdir -p .gpu_data/data/cifar10-jpeg .gpu_data/tools .gpu_data/fashion-mnist
#     cp ../shared/data/cifar10-jpeg/*.npz .gpu_data/data/cifar10-jpeg/
#     cp ../shared/tools/cifar10_from_jpeg.py .gpu_data/tools/
#     cp /usr/share/datasets/fashion-mnist/*.gz .gpu_data/fashion-mnist/
# (.gpu_data is in .git/info/exclude), then run `sh benchmarks/gpu_check.sh` through the device tool with
# carry [".gpu_data"]. It writes $OUT/*.json and logs (OUT defaults to benchmarks/out); copy the rows into
# benchmarks/RESULTS.md with the device, date and command.
set -u
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 DNAS_SHARED_DATA="$PWD/.gpu_data/data"
OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT" /usr/share/datasets/fashion-mnist
cp .gpu_data/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py tests/test_fused.py \
    -k "cuda or replay or replayed or eager" 2>&1 | tee "$OUT/tests.log" | tail -25

report() {  # the rows of a search_step JSON
    python3 -c "
import json, sys; r = json.load(open(sys.argv[1]))
print(r['device'], r['torch'], 'batch', r['batch_size'])
for x in r['results']:
    print(f\"{x['method']:10} {x['path']:11} \" + (f\"FAILED {x['error']}\" if 'error' in x else
          f\"{x['ms_per_step_median']:8} ms  {x['peak_memory_gb']} GB  x{x['speedup_over_readable']}  replayed {x['replayed']}\"))" "$1"
}
timeout 150 python3 benchmarks/search_step.py --methods darts-v1,darts-v2 --paths readable,fused,graph,graph-bf16 \
    --steps 10 --no-results > "$OUT/step.json" 2> "$OUT/step.err"; tail -3 "$OUT/step.err"; report "$OUT/step.json"
timeout 100 python3 benchmarks/search_step.py --methods pc-darts,gdas,sdarts-rs,drnas,fair-darts \
    --paths readable,fused,graph --steps 5 --no-results > "$OUT/step_recipes.json" 2> "$OUT/step_recipes.err"; tail -3 "$OUT/step_recipes.err"
report "$OUT/step_recipes.json"

timeout 40 python3 benchmarks/profile_step.py --rows 20 2>&1 | grep -v USDT | tee "$OUT/profile.log"

# real CIFAR-10, the paper's search network, 8,000 images (62 steps an epoch), 2 epochs per path
CIFAR=.cache/cifar10
[ -f "$CIFAR/cifar-10-batches-py/test_batch" ] || python3 .gpu_data/tools/cifar10_from_jpeg.py "$CIFAR" > /dev/null
timeout 180 python3 benchmarks/search_e2e.py --paths readable,fast,fast-bf16 --cifar10 "$CIFAR" --subset 8000 --layers 8 \
    --init-channels 16 --batch-size 64 --epochs 2 --no-results > "$OUT/e2e.log" 2>&1
python3 -c "
import json, sys; t = open(sys.argv[1]).read(); r = json.loads(t[t.index('{'):])
for p, x in r['runs'].items():
    print(p, x['seconds'], 's; last epoch', x['epoch_seconds'], 's; 50 full epochs', x['minutes_for_50_full_epochs'], 'min; x', x['speedup_over_readable'], x['genotype'])
print('failed:', r['failed'])" "$OUT/e2e.log" || tail -20 "$OUT/e2e.log"
