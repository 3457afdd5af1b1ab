#!/usr/bin/env python3
"""PyTorch side of tools/demucs/bench.sh, and the parity check between both sides.

    bench_reference.py make-input OUT.f32 [--seconds 60]
    bench_reference.py run --seed N --input IN.f32 --output OUT.f32 [--threads T]
    bench_reference.py compare A.f32 B.f32

`run` rebuilds the random-init model export.py wrote for the same --seed (same weights),
separates the input as `demucs.api.Separator` does (normalisation around
`demucs.apply.apply_model(shifts=0, split=True, overlap=0.25)`) and prints one JSON line.
Files are raw little-endian f32, planar (channel-major; sources first for outputs).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch


def make_input(path: str, seconds: float) -> None:
    rate = 44100
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    beat = (np.sin(2 * np.pi * 2 * t) > 0.9) * rng.normal(0, 0.4, t.size)
    tones = [0.2 * np.sin(2 * np.pi * f * t + p) for f, p in ((110, 0), (220.5, 1), (331, 2), (880, 3))]
    mix = np.stack([beat + tones[0] + tones[2], 0.8 * beat + tones[1] + tones[3]])
    mix += rng.normal(0, 0.02, mix.shape)
    mix.astype("<f4").tofile(path)


def onnx_core(model, path: str, threads: int):
    """model.forward with the network replaced by the exported ONNX graph (run by onnxruntime):
    isolates the pipeline (STFT, chunking, normalisation) from torch-vs-ORT float differences."""
    import onnxruntime as ort
    import torch.nn.functional as F

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options)
    training_length = int(model.segment * model.samplerate)

    def forward(mix):
        length = mix.shape[-1]
        if length < training_length:
            mix = F.pad(mix, (0, training_length - length))
        z = model._spec(mix)
        spec_out, wave_out = session.run(None, {"mix": mix.numpy(), "spec": model._magnitude(z).numpy()})
        x = model._ispec(model._mask(z, torch.from_numpy(spec_out)), training_length)
        return (torch.from_numpy(wave_out) + x)[..., :length]

    model.forward = forward


def run(args) -> None:
    from demucs.apply import apply_model
    from demucs_core import random_bag

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    bag = random_bag(args.name, tiny=False, seed=args.seed, segment=None)
    if args.onnx_core:
        for index, model in enumerate(bag.models):
            onnx_core(model, args.onnx_core[index], args.threads)
    load_s = time.perf_counter() - started
    wav = torch.from_numpy(np.fromfile(args.input, dtype="<f4").reshape(2, -1).copy())
    started = time.perf_counter()
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    with torch.no_grad():
        out = apply_model(bag, ((wav - mean) / std)[None], shifts=0, split=True, overlap=0.25)
    out = (out * std + mean)[0]
    run_s = time.perf_counter() - started
    audio_s = wav.shape[1] / 44100
    out.numpy().astype("<f4").tofile(args.output)
    print(json.dumps({
        "impl": "pytorch" + ("+onnx-core" if args.onnx_core else ""), "audio_s": round(audio_s, 3), "load_s": round(load_s, 3),
        "run_s": round(run_s, 3), "rtf": round(run_s / audio_s, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
    }))


def compare(a: str, b: str) -> None:
    x, y = np.fromfile(a, dtype="<f4"), np.fromfile(b, dtype="<f4")
    if x.shape != y.shape:
        raise SystemExit(f"shapes differ: {x.shape} vs {y.shape}")
    peak = float(np.abs(y).max())
    print(json.dumps({"max_abs_error": float(np.abs(x - y).max()), "peak": peak,
                      "max_error_of_peak": float(np.abs(x - y).max() / peak)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-input")
    make.add_argument("path")
    make.add_argument("--seconds", type=float, default=60.0)
    ref = sub.add_parser("run")
    ref.add_argument("--name", default="htdemucs")
    ref.add_argument("--seed", type=int, required=True)
    ref.add_argument("--input", required=True)
    ref.add_argument("--output", required=True)
    ref.add_argument("--threads", type=int, default=2)
    ref.add_argument("--onnx-core", nargs="+", default=None,
                     help="the exported graph(s): run apply_model around ONNX Runtime instead of torch")
    cmp = sub.add_parser("compare")
    cmp.add_argument("a")
    cmp.add_argument("b")
    args = parser.parse_args()
    if args.command == "make-input":
        make_input(args.path, args.seconds)
    elif args.command == "run":
        run(args)
    else:
        compare(args.a, args.b)


if __name__ == "__main__":
    main()
