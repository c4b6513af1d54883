#!/bin/sh
# The GPU checks of docs/speed.md, for a session lent a GPU: the search step of the paper's network at batch
# 64 (first and second order, the replayed step in both layouts, fp32, TF32 and bf16), the same against an
# earlier commit (stage base: one with dnas.search.precision, which the benchmarks import), an end-to-end
# search on real CIFAR-10, the fused cell's convolutions in other forms (conv_variants.py), the top kernels of
# the replayed step --fast runs and of an eager fused one, and their kernels by duration (profile_step.py), the
# CUDA tests (fused path against readable, CUDA-graph replay against eager), other recipes' paths and the NAS-Bench-201
# network's. cuDNN times its algorithms for every new shape and layout (on an H100 a channels_last search's
# first epoch took 80 s against 20 s), so each stage times few paths, in the order of what decides most, and
# reports what it measured when its timeout stops it. A session has 15 minutes of device time, a start (~35 s)
# included. On an H200 on 2026-11-28 `e2e profile e2e-evalcl tests` took 587 s (the tests cut short; the
# e2e-evalcl stage, --fast with an NHWC evaluation, went when --fast took it); so next:
# first `steps bn dw profile base` with timeout_s 600 (the replayed step with the depthwise convolutions by
# cuDNN in NHWC or by dnas's Triton kernels in NCHW, and with each of the BatchNorms' kernels: PyTorch's, dnas's
# Triton ones, PyTorch's over parts of the batch and cuDNN's; those kernels alone; the kernels of the replayed
# step with each and of the eager one; the same replayed step at 23b37f7, before the NCHW step's phases and ReLU
# heads lost 378 of its 6,943 kernels, likely cut short), then at once, on the machine still warm (it goes
# back after 30 s idle, and a fresh start needs 4 minutes of budget), `BUDGET=<seconds left, less a minute> sh
# benchmarks/gpu_check.sh tests e2e2 gdas` (more
# than a call's budget: the stages in the order of what decides most, the last ones cut short). The
# -cudnnbn paths hand the fused cells' BatchNorms a weight and a bias, so that cuDNN's kernels run them, the
# -partsbn paths run them over parts of the batch (ops.batch_norm_by_parts), the -tritonbn paths by dnas's
# Triton kernels (dnas.kernels; `bn` times the kernels alone; fused.BATCH_NORM_KERNELS), the -tritondw paths
# the depthwise convolutions by dnas's Triton kernels (`dw` times them alone; ops.TRITON_DEPTHWISE_DEVICES).
# The -lanes paths
# run the fused cells' independent ops on side streams (dnas.spaces.fused.side_streams; part of --fast on a GPU
# since they replayed a darts-v1 step in 86.6 ms against 114.9), the -merged paths their 3x3 and 5x5 ops as one
# (dnas.spaces.fused.merge_kernel_sizes; no faster there), -cl NHWC (slower with side streams, 95.9 ms; its
# gradients wrong before ops.AvgPool2d: test_cuda_channels_last_step_equals_readable says whether they are
# right now). The e2e stage's ms per step against the replayed step of `steps` says what the loop costs beyond
# the step (at 2586493, one stream: 124.3 against 114.9 ms, most of it the eager last batch that rate then
# counted).
# The lent machine has PyTorch but neither dnas nor the data; first, here:
#     mkdir -p .gpu_data/data/cifar10-jpeg .gpu_data/tools .gpu_data/fashion-mnist
#     cp ../shared/data/cifar10-jpeg/*.npz .gpu_data/data/cifar10-jpeg/
#     cp ../shared/tools/cifar10_from_jpeg.py .gpu_data/tools/
#     cp /usr/share/datasets/fashion-mnist/*.gz .gpu_data/fashion-mnist/
# and, for an A/B of the replayed step against an earlier commit on the same GPU (stage `base`),
#     mkdir -p .gpu_data/base && git archive COMMIT src | tar -x -C .gpu_data/base
# (.gpu_data in .git/info/exclude), then run `sh benchmarks/gpu_check.sh [STAGE...]` through the device
# tool with carry [".gpu_data"]; stages: steps tests e2e convs evalconvs (the evaluation's depthwise forms,
# forward only) bn (PyTorch's BatchNorm kernels against cuDNN's, by parts and Triton's) dw (the depthwise
# convolutions by ops.conv2d's forms against Triton's) profile steps2 e2e2 base recipes gdas
# (GDAS eager against its dense samples replayed) nb201 (default: all, in that order), and e2e-ways (--fast
# in NHWC with side streams and merged kernel sizes, for when `steps` finds them faster), e2e-parts and
# e2e-triton (--fast with the BatchNorms by parts, by Triton's kernels, likewise) and e2e-tritondw (with the
# depthwise convolutions by Triton's kernels). It writes
# $OUT/*.json and logs (OUT defaults to benchmarks/out; at most 8 files come back); the rows go into
# RESULTS.md by the scripts' table_rows (search_step.py, search_e2e.py) with the device, date and command.
set -u
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 DNAS_SHARED_DATA="$PWD/.gpu_data/data"
OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT" /usr/share/datasets/fashion-mnist
cp .gpu_data/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

STAGES="${*:-steps tests e2e convs evalconvs bn dw profile steps2 e2e2 base recipes gdas nb201}"
# the whole call's seconds (the device tool stops a command at 600): each stage's timeout is cut to what is left,
# less 15 s, so that a stage stopped reports what it measured before the call is killed (BUDGET=0: no cut)
BUDGET="${BUDGET:-585}" START=$(date +%s)

within() {  # seconds: $1, or what is left of BUDGET if less
    left=$((BUDGET - $(date +%s) + START - 15))
    if [ "$BUDGET" -eq 0 ] || [ "$1" -le "$left" ]; then echo "$1"; else echo $((left > 1 ? left : 1)); fi
}

report() {  # the rows of a search_step JSON
    python3 -c "
import json, sys; r = json.load(open(sys.argv[1]))
print(r['device'], r['torch'], 'batch', r['batch_size'])
for x in r['results']:
    print(f\"{x['method']:10} {x['path']:11} \" + (f\"FAILED {x['error']}\" if 'error' in x else
          f\"{x['ms_per_step_median']:8} ms  {x['peak_memory_gb']} GB  x{x['speedup_over_readable']}  replayed {x['replayed']}  \"
          + ' '.join(f'{k[11:]} {v}' for k, v in x.items() if k.startswith('first_step_vs'))))" "$1"
}
step() {  # name, methods, paths, steps, seconds[, options]: one process per call, so that a failure stays in it
    timeout "$(within "$5")" python3 benchmarks/search_step.py --methods "$2" --paths "$3" --steps "$4" --no-results ${6:-} \
        > "$OUT/step-$1.json" 2>> "$OUT/errors.log"; report "$OUT/step-$1.json" || tail -5 "$OUT/errors.log"
}
run_tests() {  # seconds, pytest arguments: appended to tests.log, its summary printed; a test that hangs is
    seconds=$1; shift  # stopped at 60 s where pytest-timeout is installed (the lent machines have it)
    per_test=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout 60")
    timeout -s INT -k 10 "$(within "$seconds")" python3 -m pytest -o addopts="" -q -rfE --tb=short --durations=5 $per_test \
        -p no:cacheprovider "$@" > "$OUT/tests.part" 2>&1  # in one process (pyproject's -n needs pytest-xdist)
    grep -E "^(FAILED|ERROR)|passed|failed|skipped|KeyboardInterrupt" "$OUT/tests.part" | tail -15
    cat "$OUT/tests.part" >> "$OUT/tests.log" && rm "$OUT/tests.part"
}
e2e() {  # name, method, paths, seconds[, options]: real CIFAR-10, the paper's search network, 8,000 images (63
         # steps an epoch), 2 epochs per path (the readable path's rate is the step benchmark's: its 2 epochs
         # take minutes)
    [ -f .cache/cifar10/cifar-10-batches-py/test_batch ] || python3 .gpu_data/tools/cifar10_from_jpeg.py .cache/cifar10 > /dev/null
    timeout "$(within "$4")" python3 benchmarks/search_e2e.py --method "$2" --paths "$3" --cifar10 .cache/cifar10 --subset 8000 \
        --layers 8 --init-channels 16 --batch-size 64 --epochs 2 --no-results ${5:-} > "$OUT/e2e-$1.log" 2>&1
    python3 -c "
import json, sys; t = open(sys.argv[1]).read(); r = json.loads(t[t.index('{'):])
for p, x in r['runs'].items():
    print(sys.argv[2], p, x['seconds'], 's; last epoch', x['epoch_seconds'], 's, the first', x.get('first_epoch_extra_seconds'),
          's more; ms per step', x.get('ms_per_step'),
          '/ eval batch', x.get('ms_per_eval_batch'), '; checkpoint', x.get('checkpoint_seconds'), 's; 50 full epochs',
          x['minutes_for_50_full_epochs'], 'min (evaluated after the last only',
          x.get('minutes_evaluated_after_the_last_only'), 'min);', x['genotype'])
print('failed:', r['failed'])" "$OUT/e2e-$1.log" "$1" || tail -20 "$OUT/e2e-$1.log"
}

for stage in $STAGES; do case $stage in
steps)
    step darts-v1 darts-v1 graph-lanes,graph-lanes-tritondw,graph-lanes-tritonbn,graph-lanes-tritondw-tritonbn,graph-lanes-partsbn,graph-lanes-cudnnbn 10 260 ;;
steps2)
    step darts-v1-ways darts-v1 graph-lanes,graph,graph-lanes-merged,graph-tf32-lanes,graph-cl-lanes,graph-bf16-cl-lanes 10 140
    step darts-v2 darts-v2 graph-lanes,graph,graph-cl-lanes 10 150 ;;
base)
    if [ -d .gpu_data/base/src ]; then
        (export PYTHONPATH="$PWD/.gpu_data/base/src"; step base darts-v1 graph-lanes 10 120)
    else echo "stage base: no .gpu_data/base/src (see the header)"; fi ;;
tests)  # the CUDA tests, in six runs: SIGINT at a timeout makes pytest list the failures it saw; first
    # those not yet run on a GPU (Triton's BatchNorm and depthwise convolution, BatchNorms by parts, dense samples,
    # cuDNN's BatchNorms, side streams in NHWC), then the NHWC step
    run_tests 90 tests/test_kernels.py tests/test_ops.py tests/test_fused.py tests/test_cuda_graph.py \
        -k "cuda and (kernels or by_parts or dense_samples or handed_a) or its_sample_on"
    run_tests 90 tests/test_cuda_graph.py -k side_streams
    run_tests 90 tests/test_fused.py -k cuda_channels_last
    run_tests 40 tests/test_ops.py tests/test_data.py tests/test_train.py -k cuda
    run_tests 240 tests/test_cuda_graph.py -k "not side_streams and not nothing_on_the_host and not host_reads_are_named"
    run_tests 120 tests/test_fused.py -k "cuda_step_equals_readable" ;;
recipes)
    step recipes pc-darts,gdas,sdarts-rs,drnas,fair-darts readable,fused,graph 5 100 ;;
gdas)  # GDAS eager (its sample read on the host) against every op computed and replayed (fused.dense_samples),
    # at batch 64 and at its code's 256, where the ops not sampled cost more arithmetic; eager with Triton's
    # BatchNorms too, whose launches cost more host time than PyTorch's
    step gdas gdas fused,fused-tritonbn,graph-lanes-dense,graph-dense 10 100
    step gdas-256 gdas fused,graph-lanes-dense 5 100 "--batch-size 256" ;;
nb201)
    step nb201 darts-v1,darts-v2,gdas readable,fused,graph,graph-cl 10 90 "--space nb201" ;;
profile)  # the kernels of the step --fast replays (side streams; their time summed beside the step's wall time),
    # then with Triton's depthwise convolutions, with its BatchNorms, and of the eager fused step (comparable to
    # the H200's at 678e22c)
    for path in graph-lanes graph-lanes-tritondw graph-lanes-tritonbn fused; do
        timeout "$(within 60)" python3 benchmarks/profile_step.py --rows 30 --path $path 2>&1 | grep -v USDT \
            | tee -a "$OUT/profile.log"
    done ;;
convs)
    timeout "$(within 80)" python3 benchmarks/conv_variants.py --repeats 30 --only "pointwise,E=8 C=16" 2>&1 | tee "$OUT/convs.log" ;;
evalconvs)  # the evaluation's forward (no gradients, batch 256): is PyTorch's own NCHW depthwise kernel then faster
    # than the NHWC form with its copies in and out (ops.conv2d's form, chosen by forward+backward)?
    timeout "$(within 60)" python3 benchmarks/conv_variants.py --forward-only --batch-size 256 --repeats 30 \
        --only "depthwise 3x3 dil 1,depthwise 5x5 dil 1,depthwise 3x3 dil 2" 2>&1 | tee "$OUT/evalconvs.log" ;;
bn)  # the fused cell's BatchNorms (28% of an eager step's device time on an H200): PyTorch's kernels, which they
    # run (an affine weight, no bias), against cuDNN's, which a zero bias would hand them to, PyTorch's over
    # parts of the batch (ops.batch_norm_by_parts) and dnas's Triton ones (dnas.kernels)
    timeout "$(within 90)" python3 benchmarks/conv_variants.py --repeats 30 --only batchnorm 2>&1 | tee "$OUT/bn.log" ;;
dw)  # the fused cell's depthwise convolutions: ops.conv2d's forms (on a GPU NHWC, an NCHW input copied in and out,
    # dilated ones by their phases) against dnas's Triton kernels on the NCHW input (dnas.kernels), and of sources
    # copied to their edges: the copies made, or read in place by Triton's
    timeout "$(within 120)" python3 benchmarks/conv_variants.py --repeats 30 --only "dil 1 by,dil 2 by,in place by" 2>&1 \
        | tee "$OUT/dw.log" ;;
e2e)
    e2e darts-v1 darts-v1 fast 150 ;;
e2e2)
    e2e darts-v2 darts-v2 fast 200 ;;
e2e-ways)  # --fast with the fused cells' ways (search settings side_streams, merge_kernel_sizes), in NHWC
    e2e darts-v1-ways darts-v1 fast-cl-lanes-merged 180 ;;
e2e-parts)  # --fast with the fused cells' BatchNorms over parts of the batch, for when `steps` finds them faster
    e2e darts-v1-parts darts-v1 fast-partsbn 150 ;;
e2e-triton)  # --fast with the fused cells' BatchNorms by Triton's kernels, likewise
    e2e darts-v1-triton darts-v1 fast-tritonbn 150 ;;
e2e-tritondw)  # --fast with the depthwise convolutions by Triton's kernels, likewise
    e2e darts-v1-tritondw darts-v1 fast-tritondw 150 ;;
*) echo "unknown stage $stage; valid: tests steps steps2 e2e e2e2 e2e-ways e2e-parts e2e-triton e2e-tritondw convs" \
        "evalconvs bn dw profile base" \
        "recipes gdas nb201" ;;
esac; done
