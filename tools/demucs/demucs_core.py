"""Shared pieces of the Demucs tools: build a model (pretrained or random), cut the
network out of HTDemucs.forward (everything between the STFT and the iSTFT), and
write the manifest the Rust runtime reads.

The Rust side (separate/src/demucs) does `_spec`, `_magnitude`, `_mask`, `_ispec`,
the chunking of `demucs.apply.apply_model` and the mean/std normalisation of
`demucs.api.Separator`; the ONNX graph does the rest of `HTDemucs.forward`.
"""

from __future__ import annotations

import math
import random
import sys
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs

FOUR_STEMS = ["drums", "bass", "other", "vocals"]
SIX_STEMS = ["drums", "bass", "other", "vocals", "guitar", "piano"]

# Architecture of the released checkpoints (41.98 M parameters for htdemucs, the
# count of the published 955717e8), used when the weights cannot be fetched.
FULL_ARCH = dict(bottom_channels=512, dconv_mode=3, segment=Fraction(39, 5))
# Small enough for a committed fixture (~0.45 MB ONNX), same structure: four
# encoder layers down to one frequency bin, the cross transformer (self + cross).
TINY_ARCH = dict(channels=4, t_layers=2, t_heads=2, t_hidden_scale=2.0, dconv_comp=2,
                 segment=Fraction(3, 10))

# name -> (sources, number of models in the bag, per-model per-source weights or None)
KNOWN_MODELS = {
    "htdemucs": (FOUR_STEMS, 1, None),
    "htdemucs_6s": (SIX_STEMS, 1, None),
    "htdemucs_ft": (FOUR_STEMS, 4, [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]),
    "hdemucs_mmi": (FOUR_STEMS, 1, None),
}


class ExportError(Exception):
    """A model that cannot be built or exported; the message says why."""


def redraw_layer_scales(model: nn.Module, generator: torch.Generator) -> int:
    """LayerScale gains start at 1e-4 (transformer) / 1e-3 (DConv), which makes a random
    model ignore those branches; draw them uniform in [0.5, 1.5] so they matter."""
    count = 0
    for module in model.modules():
        if type(module).__name__ == "LayerScale":
            scale = module.scale
            with torch.no_grad():
                scale.copy_(torch.rand(scale.shape, generator=generator) + 0.5)
            count += 1
    return count


def random_bag(name: str, tiny: bool, seed: int, segment: Fraction | None) -> BagOfModels:
    if name not in KNOWN_MODELS:
        raise ExportError(f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    if name == "hdemucs_mmi":
        raise ExportError("hdemucs_mmi is an HDemucs (v3) model; only HTDemucs (v4) graphs "
                          "are cut by this exporter and run by separate/src/demucs")
    sources, bag_size, weights = KNOWN_MODELS[name]
    arch = dict(TINY_ARCH if tiny else FULL_ARCH)
    if segment is not None:
        arch["segment"] = segment
    torch.manual_seed(seed)
    random.seed(seed)
    generator = torch.Generator().manual_seed(seed)
    models = []
    for _ in range(bag_size):
        model = HTDemucs(list(sources), **arch)
        redraw_layer_scales(model, generator)
        model.eval()
        models.append(model)
    return BagOfModels(models, weights)


def pretrained_bag(name: str) -> BagOfModels:
    from demucs.pretrained import get_model

    try:
        model = get_model(name)
    except BaseException as exc:  # demucs calls sys.exit / raises many kinds on network failure
        raise ExportError(f"could not fetch the pretrained weights of {name!r} ({exc!r}); "
                          "this machine probably cannot reach their host — use "
                          "--random-init for a model with the same architecture") from None
    if not isinstance(model, BagOfModels):
        model = BagOfModels([model])
    for sub in model.models:
        if not isinstance(sub, HTDemucs):
            raise ExportError(f"{name!r} contains a {type(sub).__name__}; only HTDemucs (v4) "
                              "graphs are supported")
    model.eval()
    return model


class CoreGraph(nn.Module):
    """HTDemucs.forward between `_magnitude` and `_mask`, for an input exactly one
    training segment long (what `apply_model` always feeds it, after padding).

    Inputs: mix [B, C, L] (the padded chunk), spec [B, 2C, F, T] (`_magnitude(_spec(mix))`).
    Outputs: spec_out [B, S, 2C, F, T] (complex-as-channels, before `_mask`/`_ispec`),
             wave_out [B, S, C, L] (the time branch, de-normalised)."""

    def __init__(self, model: HTDemucs):
        super().__init__()
        self.m = model

    def forward(self, mix: torch.Tensor, spec: torch.Tensor):
        m = self.m
        x = spec
        B, C, Fq, T = x.shape
        length = mix.shape[-1]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        xt = mix
        meant = xt.mean(dim=(1, 2), keepdim=True)
        stdt = xt.std(dim=(1, 2), keepdim=True)
        xt = (xt - meant) / (1e-5 + stdt)

        saved, saved_t, lengths, lengths_t = [], [], [], []
        for idx, encode in enumerate(m.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if idx < len(m.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = m.tencoder[idx]
                xt = tenc(xt)
                if not tenc.empty:
                    saved_t.append(xt)
                else:
                    inject = xt
            x = encode(x, inject)
            if idx == 0 and m.freq_emb is not None:
                frs = torch.arange(x.shape[-2], device=x.device)
                emb = m.freq_emb(frs).t()[None, :, :, None].expand_as(x)
                x = x + m.freq_emb_scale * emb
            saved.append(x)
        if m.crosstransformer:
            if m.bottom_channels:
                b, c, f, t = x.shape
                x = x.reshape(b, c, f * t)
                x = m.channel_upsampler(x)
                x = x.reshape(b, x.shape[1], f, t)
                xt = m.channel_upsampler_t(xt)
            x, xt = m.crosstransformer(x, xt)
            if m.bottom_channels:
                b, c, f, t = x.shape
                x = x.reshape(b, c, f * t)
                x = m.channel_downsampler(x)
                x = x.reshape(b, x.shape[1], f, t)
                xt = m.channel_downsampler_t(xt)

        for idx, decode in enumerate(m.decoder):
            skip = saved.pop(-1)
            x, pre = decode(x, skip, lengths.pop(-1))
            offset = m.depth - len(m.tdecoder)
            if idx >= offset:
                tdec = m.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    pre = pre[:, :, 0]
                    xt, _ = tdec(pre, None, length_t)
                else:
                    skip = saved_t.pop(-1)
                    xt, _ = tdec(xt, skip, length_t)

        S = len(m.sources)
        x = x.view(B, S, -1, Fq, T)
        x = x * std[:, None] + mean[:, None]
        xt = xt.view(B, S, -1, length)
        xt = xt * stdt[:, None] + meant[:, None]
        return x, xt


def training_length(model: HTDemucs) -> int:
    return int(model.segment * model.samplerate)


def spec_input(model: HTDemucs, mix: torch.Tensor) -> torch.Tensor:
    return model._magnitude(model._spec(mix))


def export_onnx(model: HTDemucs, path: Path, opset: int = 17) -> None:
    core = CoreGraph(model).eval()
    length = training_length(model)
    mix = torch.randn(1, model.audio_channels, length)
    spec = spec_input(model, mix)
    # The sinusoidal embeddings depend on T only, which is fixed by the segment.
    torch.onnx.export(
        core, (mix, spec), str(path),
        input_names=["mix", "spec"], output_names=["spec_out", "wave_out"],
        dynamic_axes={"mix": {0: "batch"}, "spec": {0: "batch"},
                      "spec_out": {0: "batch"}, "wave_out": {0: "batch"}},
        opset_version=opset, dynamo=False,
    )


def segment_text(segment) -> str:
    """Segment in seconds as TOML float with enough digits to recover int(segment*sr)."""
    return repr(float(segment))


def write_manifest(bag: BagOfModels, out_dir: Path, name: str, files: list[str]) -> Path:
    """manifest.toml in separate/src/manifest.rs's format (family "demucs")."""
    first = bag.models[0]
    segments = {training_length(m) for m in bag.models}
    if len(segments) != 1:
        raise ExportError(f"the models of the bag have different segments {segments}")
    lines = [
        f'name = "{name}"',
        'family = "demucs"',
        f"sources = [{', '.join(chr(34) + s + chr(34) for s in bag.sources)}]",
        f"sample_rate = {first.samplerate}",
        f"audio_channels = {first.audio_channels}",
        f"segment = {float(first.segment)!r}",
        "",
        "[stft]",
        f"n_fft = {first.nfft}",
        f"hop = {first.hop_length}",
        "center = true",
        'pad_mode = "reflect"',
        "normalized = true",
        "",
        "[demucs]",
        "# int(segment * sample_rate): the exact chunk length the graphs were exported for",
        f"segment_samples = {segments.pop()}",
        "",
    ]
    for file, weights in zip(files, bag.weights):
        lines += [
            "[[files]]",
            f'path = "{file}"',
            f"weights = [{', '.join(repr(float(w)) for w in weights)}]",
            "",
        ]
    path = out_dir / "manifest.toml"
    path.write_text("\n".join(lines))
    return path


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


__all__ = [
    "CoreGraph", "ExportError", "KNOWN_MODELS", "export_onnx", "fail", "math",
    "pretrained_bag", "random_bag", "spec_input", "training_length", "write_manifest",
]
