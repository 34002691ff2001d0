#!/usr/bin/env bash
# Issue 20's fidelity table: eight served configurations on one machine, each measured against a
# real `ember serve` and simulated by `ember sim run`. Run it on an idle machine (~20 min):
#   bash benchmarks/sim_fidelity_suite.sh [WORKDIR]
# A: int4 (the default), calibrated once (offline chat-like, the prompt sweep, served chat-like at
#    0.6 req/s), chat-like at five rates up to near capacity;
# B, C: the same step model, other workloads and a policy (out of sample);
# D: another linear method (dense fp32 weights), calibrated the same way on its own runs.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/simfid_suite}
R=benchmarks/results/sim
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$W"
$PY benchmarks/sim_fidelity.py --kind linear --rates 0.6,1.0,1.5,4.0,7.0 --workdir "$W/A" --out $R/fidelity_suite_chat.json
cp "$W/A/model.json" $R/model_int4_linear_sweep.json
$PY benchmarks/sim_fidelity.py --model-json "$W/A/model.json" --workdir "$W/B" --rates 1.0,2.0 \
    --workload "--workload random --num-prompts 40 --input-len 200 --output-len 48 --range-ratio 0.5" \
    --out $R/fidelity_suite_random.json
$PY benchmarks/sim_fidelity.py --model-json "$W/A/model.json" --workdir "$W/C" --rates 1.2 --sched-args "--policy vtc" \
    --workload "--workload multi-tenant --num-prompts 40 --max-input-len 512 --max-output-len 64" \
    --out $R/fidelity_suite_vtc.json
$PY benchmarks/sim_fidelity.py --kind linear --engine "--threads 1 --max-num-seqs 16 --kv-cache-tokens 16384 --linear dense --dtype fp32" \
    --calib-rate 0.4 --rates 0.4,0.8 --workdir "$W/D" --out $R/fidelity_suite_dense.json
cp "$W/D/model.json" $R/model_dense_fp32_linear_sweep.json
# D again with the kind calibration keeps by replaying the profiled runs (a tree here): no new measurement
$PY benchmarks/sim_fidelity.py --resimulate --kind auto --engine "--threads 1 --max-num-seqs 16 --kv-cache-tokens 16384 --linear dense --dtype fp32" \
    --calib-rate 0.4 --rates 0.4,0.8 --workdir "$W/D" --out $R/fidelity_suite_dense_auto.json
cp "$W/D/model.json" $R/model_dense_fp32_auto_sweep.json
$PY benchmarks/sim_fidelity_table.py $R/fidelity_suite_chat.json $R/fidelity_suite_random.json \
    $R/fidelity_suite_vtc.json $R/fidelity_suite_dense.json $R/fidelity_suite_dense_auto.json
