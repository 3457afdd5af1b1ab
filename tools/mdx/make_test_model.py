#!/usr/bin/env python3
"""Writes the tiny MDX-Net-shaped test models of separate/tests/fixtures/mdx/ (numpy + onnx
only; pinned in tools/requirements-convert.txt):

- identity.onnx: output = input. With dim_f = all bins the target is the mix itself, which
  pins down the chunking (every sample must come back exactly once).
- random.onnx: output = input + conv3x3(input) with seeded random weights, dim_f below the
  bin count: a real model's I/O, shape [batch, 4, dim_f, dim_t], dynamic batch.

Usage: make_test_model.py [--out separate/tests/fixtures/mdx] [--seed 0]
"""

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N_FFT, HOP, DIM_T = 256, 64, 16
BINS = N_FFT // 2 + 1

MANIFEST = """\
# Written by tools/mdx/make_test_model.py: a tiny model with MDX-Net's I/O, for tests only.
family = "mask"
name = "{name}"
sources = ["vocals", "instrumental"]
sample_rate = 44100
audio_channels = 2

[stft]
n_fft = {n_fft}
hop = {hop}
center = true
pad_mode = "reflect"

[[files]]
path = "{name}.onnx"

[mask]
kind = "mdx"
target = "vocals"
dim_f = {dim_f}
dim_t = {dim_t}
batch = 3
"""


def save(model, out, name, dim_f):
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.path.join(out, f"{name}.onnx"))
    with open(os.path.join(out, f"{name}.toml"), "w") as f:
        f.write(MANIFEST.format(name=name, n_fft=N_FFT, hop=HOP, dim_f=dim_f, dim_t=DIM_T))


def io(dim_f):
    shape = ["batch", 4, dim_f, DIM_T]
    return (helper.make_tensor_value_info("input", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("output", TensorProto.FLOAT, shape))


def model(nodes, dim_f, inits=()):
    inp, out = io(dim_f)
    graph = helper.make_graph(nodes, "mdx_test", [inp], [out], list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="msaas tools/mdx")
    m.ir_version = 8
    return m


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "../../separate/tests/fixtures/mdx"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    save(model([helper.make_node("Identity", ["input"], ["output"])], BINS), args.out, "identity", BINS)

    rng = np.random.default_rng(args.seed)
    dim_f = 96
    weight = (rng.standard_normal((4, 4, 3, 3)) * 0.2).astype(np.float32)
    bias = (rng.standard_normal(4) * 0.01).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["input", "conv"], ["output"]),
    ]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    save(model(nodes, dim_f, inits), args.out, "random", dim_f)
    print(f"wrote identity and random test models to {args.out}")


if __name__ == "__main__":
    main()
