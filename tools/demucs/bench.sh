#!/usr/bin/env bash
# Side-by-side benchmark: msaas (Rust + ONNX Runtime) vs PyTorch demucs.apply.apply_model on
# the same full-size random-init htdemucs weights, 60 s stereo, shifts=0, overlap 0.25.
# Needs the reference venv (torch, demucs, onnx; default: the one ./refvenv makes) and ONNX Runtime
# (tools/setup). Heavy: exports a ~170 MB ONNX and runs minutes; run on demand only.
#
#   tools/demucs/bench.sh [WORKDIR]        env: PYTHON, SECONDS_OF_AUDIO, THREADS, SEED, ROUNDS (2)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="${1:-${TMPDIR:-/tmp}/msaas-demucs-bench}"
python="${PYTHON:-$("$here/refvenv")}"
seconds="${SECONDS_OF_AUDIO:-60}"
threads="${THREADS:-$(nproc)}"
seed="${SEED:-7}"
mkdir -p "$work"

if [ ! -f "$work/model/manifest.toml" ]; then
  echo "exporting full-size htdemucs (random init, seed $seed) to $work/model" >&2
  (cd "$here" && "$python" export.py htdemucs --random-init --seed "$seed" --out "$work/model" >&2)
fi
"$python" "$here/bench_reference.py" make-input "$work/mix.f32" --seconds "$seconds"

echo "building the Rust bench" >&2
(cd "$root" && cargo bench -p separate --bench demucs --no-run >&2)

# The sides alternate, ROUNDS times (2 by default), so a change of load hits them alike.
rounds="${ROUNDS:-2}"
lines=()
for round in $(seq "$rounds"); do
  echo "round $round: msaas" >&2
  lines+=("$(cd "$root" && DEMUCS_BENCH_MODEL="$work/model/manifest.toml" DEMUCS_BENCH_INPUT="$work/mix.f32" \
    DEMUCS_BENCH_OUTPUT="$work/msaas.f32" DEMUCS_BENCH_THREADS="$threads" \
    cargo bench -q -p separate --bench demucs 2>/dev/null | grep '^{')")
  echo "round $round: PyTorch" >&2
  lines+=("$(cd "$here" && "$python" bench_reference.py run --seed "$seed" --input "$work/mix.f32" \
    --output "$work/pytorch.f32" --threads "$threads" 2>/dev/null | grep '^{')")
  echo "round $round: the Python pipeline around the ONNX graph (pipeline parity)" >&2
  lines+=("$(cd "$here" && "$python" bench_reference.py run --seed "$seed" --input "$work/mix.f32" \
    --output "$work/pyort.f32" --threads "$threads" --onnx-core "$work/model/htdemucs.onnx" 2>/dev/null | grep '^{')")
done
echo "${seconds} s stereo, full-size htdemucs (random weights, seed $seed), $threads threads each, $rounds alternating round(s)"
echo
printf '%s\n' "${lines[@]}" | python3 "$root/tools/bench/table.py"
echo
echo "parity vs PyTorch end to end: $("$python" "$here/bench_reference.py" compare "$work/msaas.f32" "$work/pytorch.f32")"
echo "parity vs the Python pipeline on the same ONNX graph: $("$python" "$here/bench_reference.py" compare "$work/msaas.f32" "$work/pyort.f32")"
