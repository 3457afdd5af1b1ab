#!/usr/bin/env python3
"""Export a Demucs v4 (HTDemucs) model to ONNX without its STFT/iSTFT, plus manifest.toml.

    python export.py htdemucs --out DIR                       # pretrained weights (needs network)
    python export.py htdemucs --random-init --seed 1 --out DIR
    python export.py htdemucs --random-init --tiny --seed 1 --out DIR   # ~0.45 MB test model

A bag (htdemucs_ft) becomes one ONNX file per model and a [[models]] entry each with its
per-source weights. See README.md.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import torch

from demucs_core import (ExportError, KNOWN_MODELS, CoreGraph, export_onnx, fail,
                         pretrained_bag, random_bag, spec_input, write_manifest)


def check_cut(model, tolerance: float = 1e-4) -> float:
    """The cut graph + demucs's own _mask/_ispec must equal model(mix): proves the cut."""
    length = int(model.segment * model.samplerate)
    mix = torch.randn(1, model.audio_channels, length, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(mix)
        spec_out, wave_out = CoreGraph(model)(mix, spec_input(model, mix))
        z = model._spec(mix)
        rebuilt = model._ispec(model._mask(z, spec_out), length) + wave_out
    error = (reference - rebuilt).abs().max().item() / reference.abs().max().item()
    if error > tolerance:
        raise ExportError(f"cut graph differs from HTDemucs.forward by {error:.3g} of peak")
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(KNOWN_MODELS))
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights (LayerScale gains re-drawn in [0.5, 1.5])")
    parser.add_argument("--tiny", action="store_true", help="small channels (test fixtures)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--segment", type=str, default=None,
                        help="training segment in seconds for --random-init (e.g. 0.3 or 39/5)")
    parser.add_argument("--model-name", default=None, help="manifest name (default: NAME)")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()
    try:
        if args.random_init:
            segment = Fraction(args.segment) if args.segment else None
            bag = random_bag(args.name, args.tiny, args.seed, segment)
        else:
            if args.tiny or args.segment:
                raise ExportError("--tiny/--segment only apply with --random-init")
            bag = pretrained_bag(args.name)
        args.out.mkdir(parents=True, exist_ok=True)
        files = []
        for index, model in enumerate(bag.models):
            error = check_cut(model)
            file = f"{args.name}.onnx" if len(bag.models) == 1 else f"{args.name}.{index}.onnx"
            export_onnx(model, args.out / file, args.opset)
            files.append(file)
            print(f"wrote {args.out / file} (cut checked: {error:.2g} of peak)")
        print(f"wrote {write_manifest(bag, args.out, args.model_name or args.name, files)}")
    except ExportError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
