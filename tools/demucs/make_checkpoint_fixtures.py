#!/usr/bin/env python3
"""Regenerate separate/tests/fixtures/demucs-checkpoints: random-init HTDemucs checkpoints in
both official formats, the files convert.py must refuse, an input clip and what
`demucs.apply.apply_model` makes of it. Needs torch + demucs: run it through
`tools/demucs/make-checkpoint-fixtures`, which makes the reference venv.

Models (see CHECKPOINT_MODELS):
- tiny: demucs_core.TINY_ARCH, only the kwargs that differ from HTDemucs's defaults;
- published_small: the published htdemucs kwargs in full (dconv_mode 3, bottom_channels,
  5 transformer layers self/cross/self/cross/self, segment 39/5, ...) with narrow channels.

Each is saved as `<model>.th` (demucs/states.py serialize_model(half=True), torch.save zip)
and `<model>.safetensors` (what demucs/hf.py load_safetensors_model reads: float16 tensors,
klass/args/kwargs as JSON metadata, Fractions tagged). Both hold the same float16 weights.
LayerScale gains are re-drawn in [0.5, 1.5] (demucs_core.redraw_layer_scales).

Refusal fixtures: forbidden_global.th (a tiny model whose training_args unpickle
`builtins.exec` of code that would create PAYLOAD_MARKER), truncated.th (tiny.th cut short),
hdemucs.safetensors (klass demucs.hdemucs.HDemucs: a v3 model).

Reference: input.wav (16-bit stereo, exact in f32) separated with `demucs.api.Separator`'s
normalisation around apply_model(shifts=0, split=True, overlap=0.25) — make_fixture.py's
reference — on the model loaded from its .th by demucs itself; expected/<model>/<source>.wav
are 32-bit float WAVs. cases.toml lists everything for the Rust tests.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demucs.apply import BagOfModels  # noqa: E402
from demucs.hf import load_safetensors_model  # noqa: E402
from demucs.htdemucs import HTDemucs  # noqa: E402
from demucs.states import get_state, load_model  # noqa: E402
from demucs_core import FOUR_STEMS, TINY_ARCH, redraw_layer_scales  # noqa: E402
from make_fixture import reference, write_wav16  # noqa: E402

SAMPLE_RATE = 44100
INPUT_FRAMES = 22_050  # 0.5 s: three chunks of the tiny model's 0.3 s segment
OVERLAP = 0.25
PAYLOAD_MARKER = "/tmp/msaas-forbidden-global-payload-ran"

# The published htdemucs configuration (shared/research/demucs-weights.md), every option
# spelled out as the training config stores them, narrowed so the files stay small.
PUBLISHED_SMALL = dict(
    sources=FOUR_STEMS, audio_channels=2, samplerate=SAMPLE_RATE, segment=Fraction(39, 5),
    channels=8, channels_time=None, growth=2, nfft=4096, wiener_iters=0, end_iters=0,
    wiener_residual=False, cac=True, depth=4, rewrite=True, multi_freqs=[],
    multi_freqs_depth=3, freq_emb=0.2, emb_scale=10, emb_smooth=True, kernel_size=8,
    time_stride=2, stride=4, context=1, context_enc=0, norm_starts=4, norm_groups=4,
    dconv_mode=3, dconv_depth=2, dconv_comp=8, dconv_init=1e-3, bottom_channels=48,
    t_layers=5, t_emb="sin", t_hidden_scale=4.0, t_heads=8, t_dropout=0.0,
    t_max_positions=10000, t_norm_in=True, t_norm_in_group=False, t_group_norm=False,
    t_norm_first=True, t_norm_out=True, t_max_period=10000.0, t_weight_decay=0.0, t_lr=None,
    t_layer_scale=True, t_gelu=True, t_weight_pos_embed=1.0, t_sin_random_shift=0,
    t_cape_mean_normalize=True, t_cape_augment=True, t_cape_glob_loc_scale=[5000.0, 1.0, 1.4],
    t_sparse_self_attn=False, t_sparse_cross_attn=False, t_mask_type="diag",
    t_mask_random_seed=42, t_sparse_attn_window=500, t_global_window=100, t_sparsity=0.95,
    t_auto_sparsity=False, t_cross_first=False, rescale=0.1, use_train_segment=True,
)
# name -> (kwargs, seed)
CHECKPOINT_MODELS = {
    "tiny": (dict(sources=FOUR_STEMS, **TINY_ARCH), 11),
    "published_small": (PUBLISHED_SMALL, 12),
}


def random_model(kwargs: dict, seed: int) -> HTDemucs:
    torch.manual_seed(seed)
    model = HTDemucs(**kwargs)  # by name, as demucs/train.py builds it: args stay empty
    redraw_layer_scales(model, torch.Generator().manual_seed(seed))
    return model.eval()


def package(model: HTDemucs, training_args: dict) -> dict:
    """What demucs/states.py serialize_model(model, args, half=True) returns (its
    OmegaConf.to_container of the training config is a plain dict)."""
    args, kwargs = model._init_args_kwargs
    return {"klass": model.__class__, "args": args, "kwargs": kwargs,
            "state": get_state(model, None, half=True), "training_args": training_args}


def json_with_fractions(value):
    """The JSON encoding demucs/hf.py `_decode_json` reverses."""
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, dict):
        return {k: json_with_fractions(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_with_fractions(v) for v in value]
    return value


def save_safetensors(pkg: dict, path: Path) -> None:
    klass = pkg["klass"]
    metadata = {"klass": f"{klass.__module__}.{klass.__name__}",
                "args": json.dumps(json_with_fractions(pkg["args"])),
                "kwargs": json.dumps(json_with_fractions(pkg["kwargs"]))}
    save_file({k: v.contiguous() for k, v in pkg["state"].items()}, str(path), metadata=metadata)


class ExecOnLoad:
    """Unpickles as builtins.exec(code): what a malicious checkpoint would carry."""

    def __reduce__(self):
        return (exec, (f"open({PAYLOAD_MARKER!r}, 'w').close()",))


def write_wav_f32(path: Path, frames: np.ndarray) -> None:
    """frames: [channels, length]; WAVE_FORMAT_IEEE_FLOAT (3), 32 bits."""
    channels, length = frames.shape
    data = np.ascontiguousarray(frames.T, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, channels, SAMPLE_RATE, SAMPLE_RATE * channels * 4, channels * 4, 32)
    with open(path, "wb") as out:
        out.write(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE")
        out.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
        out.write(b"data" + struct.pack("<I", len(data)) + data)


def make_input(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(INPUT_FRAMES) / SAMPLE_RATE
    left = 0.35 * np.sin(2 * math.pi * 196 * t) + 0.15 * np.sin(2 * math.pi * 2093 * t)
    right = 0.3 * np.sin(2 * math.pi * 123 * t + 1.0) * (1 + 0.5 * np.sin(2 * math.pi * 3 * t))
    bursts = (np.sin(2 * math.pi * 5 * t) > 0.9) * rng.normal(0, 0.25, INPUT_FRAMES)
    mix = np.stack([left + bursts, right - 0.7 * bursts]) + rng.normal(0, 0.03, (2, INPUT_FRAMES))
    return np.clip(np.round(mix * 32767), -32768, 32767).astype(np.int16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[2]
    parser.add_argument("--out", type=Path,
                        default=root / "separate/tests/fixtures/demucs-checkpoints")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    training_args = {"seed": 0, "dset": {"samplerate": SAMPLE_RATE, "channels": 2},
                     "note": "random init by tools/demucs/make_checkpoint_fixtures.py"}

    pcm = make_input(np.random.default_rng(2024))
    write_wav16(out / "input.wav", pcm)
    wav = torch.from_numpy(pcm.astype(np.float32) / 32768.0)

    lines = ["# regenerated by tools/demucs/make_checkpoint_fixtures.py",
             f"input = \"input.wav\"  # {INPUT_FRAMES} frames, 16-bit stereo",
             f"overlap = {OVERLAP}", "shifts = 0", f'payload_marker = "{PAYLOAD_MARKER}"', ""]
    for name, (kwargs, seed) in CHECKPOINT_MODELS.items():
        pkg = package(random_model(kwargs, seed), training_args)
        torch.save(pkg, out / f"{name}.th")
        save_safetensors(pkg, out / f"{name}.safetensors")
        from_th = load_model(str(out / f"{name}.th")).eval()
        from_safetensors = load_safetensors_model(out / f"{name}.safetensors").eval()
        expected = reference(BagOfModels([from_th]), wav, OVERLAP, None)
        again = reference(BagOfModels([from_safetensors]), wav, OVERLAP, None)
        if not torch.equal(expected, again):
            raise SystemExit(f"{name}: the .th and .safetensors files hold different weights")
        stems = out / "expected" / name
        stems.mkdir(parents=True, exist_ok=True)
        for index, source in enumerate(from_th.sources):
            write_wav_f32(stems / f"{source}.wav", expected[index].numpy())
        peak = float(expected.abs().max())
        lines += ["[[models]]", f'name = "{name}"', f'files = ["{name}.th", "{name}.safetensors"]',
                  f'expected = "expected/{name}"  # <source>.wav, 32-bit float',
                  f"sources = [{', '.join(chr(34) + s + chr(34) for s in from_th.sources)}]",
                  f"segment_samples = {int(from_th.segment * from_th.samplerate)}",
                  f"peak = {peak!r}", ""]
        print(f"{name}: {sum(p.numel() for p in from_th.parameters())} parameters, peak {peak:.4f}")

    tiny_kwargs, tiny_seed = CHECKPOINT_MODELS["tiny"]
    hostile = package(random_model(tiny_kwargs, tiny_seed), {"payload": ExecOnLoad()})
    torch.save(hostile, out / "forbidden_global.th")
    tiny_bytes = (out / "tiny.th").read_bytes()
    (out / "truncated.th").write_bytes(tiny_bytes[: len(tiny_bytes) * 3 // 5])
    save_file({"dummy": torch.zeros(1)}, str(out / "hdemucs.safetensors"), metadata={
        "klass": "demucs.hdemucs.HDemucs", "args": "[]",
        "kwargs": json.dumps({"sources": FOUR_STEMS})})
    lines += ["[[refusals]]", 'file = "forbidden_global.th"', 'code = "forbidden_global"', "",
              "[[refusals]]", 'file = "truncated.th"', 'code = "corrupt_checkpoint"', "",
              "[[refusals]]", 'file = "hdemucs.safetensors"', 'code = "unsupported_model"', ""]
    (out / "cases.toml").write_text("\n".join(lines))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
