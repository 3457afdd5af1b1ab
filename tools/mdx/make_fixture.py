#!/usr/bin/env python3
"""Regenerates separate/tests/fixtures/mdx/random_expected.f32: the community MDX-Net
inference (KUIELab / UVR `ConvTDFNet.stft/istft` + `demix`, written out below with torch)
on random.onnx and a synthetic input that separate/tests/mdx.rs rebuilds from the same formula.

  "$(tools/demucs/refvenv)" tools/mdx/make_fixture.py     (torch, onnxruntime, numpy)
"""

import os
import re

import numpy as np
import onnxruntime as ort
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "../../separate/tests/fixtures/mdx")
LENGTH = 3_001


def synthetic_input():
    """Two channels of LCG noise plus a sine (same recipe as the Rust test's `noise`)."""
    out = np.empty((2, LENGTH), dtype=np.float32)
    for c, seed in enumerate((1, 2)):
        state = seed
        for i in range(LENGTH):
            state = (state * 6364136223846793005 + 1442695040888963407) & ((1 << 64) - 1)
            n = np.float32((state >> 40) / float(1 << 24)) - np.float32(0.5)
            out[c, i] = np.float32(0.4) * n + np.float32(0.3) * np.sin(np.float32(i) * np.float32(0.05), dtype=np.float32)
    return out


def main():
    manifest = open(os.path.join(FIXTURES, "random.toml")).read()
    value = lambda key: int(re.search(rf"^{key} = (\d+)", manifest, re.M).group(1))
    n_fft, hop, dim_f, dim_t = value("n_fft"), value("hop"), value("dim_f"), value("dim_t")
    n_bins = n_fft // 2 + 1
    chunk_size = hop * (dim_t - 1)
    window = torch.hann_window(n_fft, periodic=True)
    session = ort.InferenceSession(os.path.join(FIXTURES, "random.onnx"))

    def stft(x):  # [B, 2, chunk] -> [B, 4, dim_f, dim_t]
        x = x.reshape([-1, chunk_size])
        x = torch.stft(x, n_fft=n_fft, hop_length=hop, window=window, center=True, return_complex=True)
        x = torch.view_as_real(x).permute([0, 3, 1, 2])
        x = x.reshape([-1, 2, 2, n_bins, dim_t]).reshape([-1, 4, n_bins, dim_t])
        return x[:, :, :dim_f]

    def istft(x):  # [B, 4, dim_f, dim_t] -> [B, 2, chunk]
        pad = torch.zeros([x.shape[0], 4, n_bins - dim_f, dim_t])
        x = torch.cat([x, pad], -2)
        x = x.reshape([-1, 2, 2, n_bins, dim_t]).reshape([-1, 2, n_bins, dim_t])
        x = x.permute([0, 2, 3, 1]).contiguous()
        x = torch.istft(torch.view_as_complex(x), n_fft=n_fft, hop_length=hop, window=window, center=True)
        return x.reshape([-1, 2, chunk_size])

    mix = synthetic_input()
    trim = n_fft // 2
    gen_size = chunk_size - 2 * trim
    pad = gen_size - LENGTH % gen_size
    mix_p = np.concatenate([np.zeros((2, trim)), mix, np.zeros((2, pad)), np.zeros((2, trim))], 1).astype(np.float32)
    waves = [mix_p[:, i:i + chunk_size] for i in range(0, LENGTH + pad, gen_size)]
    spec = stft(torch.from_numpy(np.stack(waves)))
    pred = torch.from_numpy(session.run(None, {"input": spec.numpy()})[0])
    tar = istft(pred)[:, :, trim:-trim].transpose(0, 1).reshape(2, -1)[:, :-pad].numpy()
    tar.astype("<f4").tofile(os.path.join(FIXTURES, "random_expected.f32"))
    print(f"wrote random_expected.f32: target of {LENGTH} samples x 2 channels, peak {np.abs(tar).max():.4f}")


if __name__ == "__main__":
    main()
