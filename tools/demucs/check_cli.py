#!/usr/bin/env python3
"""End-to-end check of `msaas run` with an exported random-init demucs against PyTorch.

    "$(tools/demucs/refvenv)" tools/demucs/check_cli.py --msaas target/debug/msaas \
        [--model-dir separate/tests/fixtures/demucs/tiny --seed 1234] [--seconds 2.29]

Makes a fresh input (never seen by the tests), runs `msaas run IN --model DIR/manifest.toml
--format wav --wav-format f32 --clip-mode none`, separates the same input with
`demucs.apply.apply_model` (shifts=0, overlap 0.25, `demucs.api.Separator` normalisation) on
the weights `export.py --random-init --tiny --seed SEED` / make_fixture.py exported, and prints
the largest difference per stem as a fraction of the reference's peak (goal: ≤ 1e-4).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from demucs.apply import apply_model
from demucs_core import random_bag


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--msaas", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, default=root / "separate/tests/fixtures/demucs/tiny")
    parser.add_argument("--name", default="htdemucs", help="the model export.py built (htdemucs_ft: a bag)")
    parser.add_argument("--seed", type=int, default=1234, help="the seed the model was exported with")
    parser.add_argument("--seconds", type=float, default=2.29)
    args = parser.parse_args()

    rng = np.random.default_rng(99)
    frames = int(args.seconds * 44100)
    t = np.arange(frames) / 44100
    mix = np.stack([0.4 * np.sin(2 * np.pi * 97 * t) + rng.normal(0, 0.1, frames),
                    0.3 * np.sign(np.sin(2 * np.pi * 3 * t)) * rng.normal(0, 0.2, frames)])
    pcm = np.clip(np.round(mix * 32767), -32768, 32767).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "song.wav"
        with wave.open(str(source), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(44100)
            out.writeframes(pcm.T.astype("<i2").tobytes())
        subprocess.run([str(args.msaas), "run", str(source), "--model",
                        str(args.model_dir / "manifest.toml"), "--format", "wav",
                        "--wav-format", "f32", "--clip-mode", "none", "-o", tmp], check=True)

        bag = random_bag(args.name, tiny=True, seed=args.seed, segment=None)
        wav = torch.from_numpy(pcm.astype(np.float32) / 32768)
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        with torch.no_grad():
            expected = apply_model(bag, ((wav - mean) / std)[None], shifts=0, split=True,
                                   overlap=0.25)
        expected = (expected * std + mean)[0].numpy()
        peak = float(np.abs(expected).max())
        worst = 0.0
        for index, name in enumerate(bag.sources):
            got, _ = sf.read(str(Path(tmp) / "song" / f"{name}.wav"), dtype="float32")
            error = float(np.abs(got.T - expected[index]).max()) / peak
            worst = max(worst, error)
            print(f"{name}: max error {error:.2e} of peak")
    print(f"worst {worst:.2e} of peak: {'ok' if worst <= 1e-4 else 'FAIL'}")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
