#!/usr/bin/env python3
"""Check tools/demucs/convert.py against PyTorch demucs (run it in the reference venv,
e.g. through tools/demucs/check-convert).

    python check_convert.py [--fixtures DIR] [--full] [--keep DIR]

convert.py always runs in a subprocess whose imports of torch/demucs are blocked and which
fails if either ends up in sys.modules. For every checkpoint its ONNX graph (onnxruntime,
batch 2) is compared with demucs_core.CoreGraph on the model demucs itself loads from the same
file; the goal is a max abs difference ≤ 1e-5 of the reference's peak, per output.

- the committed fixtures (separate/tests/fixtures/demucs-checkpoints), as .th (zip),
  .safetensors, and re-saved here as legacy (non-zip) .th and float32 safetensors;
- random models of other configurations the builder claims (dconv modes, post-norm, ReLU,
  no LayerScale, cross first, no rewrite, a branch merge at depth 5, ...);
- refusals: forbidden global (and its payload did not run), truncated file, HDemucs,
  unsupported options, bad tensors, bad CLI options: one `[code] ...` line, non-zero exit;
- --full: full-size htdemucs and htdemucs_6s (random weights, both formats) with the
  conversion's wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from demucs.hdemucs import HDemucs  # noqa: E402
from demucs.hf import load_safetensors_model  # noqa: E402
from demucs.htdemucs import HTDemucs  # noqa: E402
from demucs.states import load_model  # noqa: E402
from demucs_core import FOUR_STEMS, SIX_STEMS, TINY_ARCH, CoreGraph, spec_input  # noqa: E402
import convert  # noqa: E402  (its tables only; conversions run in a subprocess)
from make_checkpoint_fixtures import (PUBLISHED_SMALL, PAYLOAD_MARKER, package,  # noqa: E402
                                      random_model, save_safetensors)

TOLERANCE = 1e-5
# Runs convert.py with torch and demucs unimportable, and proves neither was imported.
NO_TORCH_WRAPPER = r"""
import os, runpy, sys
BLOCKED = ("torch", "demucs")
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"convert.py must not import {name}")
sys.meta_path.insert(0, BlockTorch())
script = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open("/proc/self/status") as status, open(os.environ["PEAK_RSS_FILE"], "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if leaked:
        print(f"[check] convert.py imported {leaked}", file=sys.stderr)
        os._exit(97)
"""


def run_convert(files, out: Path, name: str, *extra: str):
    """(exit status, stderr, wall seconds, peak RSS in MB) of one convert.py run."""
    command = [sys.executable, "-c", NO_TORCH_WRAPPER, str(HERE / "convert.py"),
               "--out", str(out), "--name", name, *extra, *map(str, files)]
    with tempfile.NamedTemporaryFile("r") as peak:
        started = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PEAK_RSS_FILE=peak.name))
        seconds = time.perf_counter() - started
        peak_kb = int(peak.read() or 0)  # VmHWM of convert.py's own process
    return done.returncode, done.stderr, seconds, peak_kb / 1024


def load_reference(path: Path) -> HTDemucs:
    if path.suffix == ".safetensors":
        return load_safetensors_model(path).eval()
    return load_model(str(path)).eval()


def parity(model: HTDemucs, onnx_path: Path, batch: int = 2, seed: int = 0) -> tuple[float, float]:
    """Worst max |onnx - torch| / peak(torch) over the two outputs, and the same for torch
    float32 against torch float64 (the float32 noise floor the first is measured against)."""
    length = int(model.segment * model.samplerate)
    mix = 0.3 * torch.randn(batch, model.audio_channels, length,
                            generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        spec = spec_input(model, mix)
        expected = CoreGraph(model)(mix, spec)
        exact = CoreGraph(copy.deepcopy(model).double())(mix.double(), spec.double())
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    got = session.run(["spec_out", "wave_out"], {"mix": mix.numpy(), "spec": spec.numpy()})
    worst = noise = 0.0
    for want, have, truth in zip(expected, got, exact):
        want, truth = want.numpy(), truth.numpy()
        if want.shape != have.shape:
            raise AssertionError(f"shape {have.shape}, expected {want.shape}")
        worst = max(worst, float(np.abs(want - have).max() / np.abs(want).max()))
        noise = max(noise, float(np.abs(want - truth).max() / np.abs(truth).max()))
    return worst, noise


class Report:
    def __init__(self):
        self.failures: list[str] = []

    def check(self, ok: bool, line: str) -> None:
        print(("ok    " if ok else "FAIL  ") + line, flush=True)
        if not ok:
            self.failures.append(line)


def check_parity(report: Report, path: Path, work: Path, label: str,
                 segment: str | None = None, batch: int = 2) -> None:
    out = work / f"out-{label}"
    extra = ["--segment", segment] if segment else []
    status, stderr, seconds, rss = run_convert([path], out, "model", *extra)
    if status != 0:
        report.check(False, f"{label}: convert.py failed ({status}): {stderr.strip()}")
        return
    model = load_reference(path)
    if segment:
        model.segment = Fraction(segment)
    error, noise = parity(model, out / "model.onnx", batch)
    report.check(error <= TOLERANCE, f"{label}: max diff {error:.2e} of peak (torch f32 vs f64: "
                 f"{noise:.1e}; convert {seconds:.1f} s, peak RSS {rss:.0f} MB)")


def legacy_copy(th: Path, dest: Path) -> Path:
    torch.save(torch.load(str(th), weights_only=False), str(dest),
               _use_new_zipfile_serialization=False)
    return dest


def float32_safetensors(th: Path, dest: Path) -> Path:
    pkg = torch.load(str(th), weights_only=False)
    pkg["state"] = {k: v.float() for k, v in pkg["state"].items()}
    save_safetensors(pkg, dest)
    return dest


def rewrite_safetensors(src: Path, dest: Path, kwargs_changes=None, drop=None, klass=None) -> Path:
    """A copy of `src` with its metadata kwargs changed or one tensor left out."""
    data = src.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    body = data[8 + size:]
    metadata = header.pop("__metadata__")
    kwargs = json.loads(metadata["kwargs"])
    kwargs.update(kwargs_changes or {})
    metadata["kwargs"] = json.dumps(kwargs)
    if klass:
        metadata["klass"] = klass
    if drop:
        del header[drop]
    header["__metadata__"] = metadata
    encoded = json.dumps(header).encode()
    dest.write_bytes(struct.pack("<Q", len(encoded)) + encoded + body)
    return dest


def check_refusal(report: Report, label: str, files, work: Path, code: str, *extra: str) -> None:
    status, stderr, _, _ = run_convert(files, work / f"refused-{label}", "model", *extra)
    lines = stderr.strip().splitlines()
    ok = status != 0 and len(lines) == 1 and lines[0].startswith(f"[{code}] ")
    report.check(ok, f"{label}: refused with {lines[0] if lines else '(nothing)'!r} (status {status})")
    report.check(not (work / f"refused-{label}").exists(), f"{label}: no output directory left")


# Configurations beyond the fixtures that the builder claims: (label, HTDemucs kwargs).
VARIANTS = [
    ("dconv_mode_0_no_rewrite", dict(TINY_ARCH, dconv_mode=0, rewrite=False)),
    ("dconv_mode_2_context", dict(TINY_ARCH, dconv_mode=2, context=2, context_enc=1)),
    ("post_norm_relu_no_layer_scale", dict(TINY_ARCH, t_norm_first=False, t_gelu=False,
                                           t_layer_scale=False, t_layers=3)),
    ("cross_first_no_norm_in_out", dict(TINY_ARCH, t_cross_first=True, t_norm_in=False,
                                        t_norm_out=False, t_weight_pos_embed=0.5, t_layers=3)),
    ("undilated_dconv_no_freq_emb", dict(TINY_ARCH, dconv_depth=-2, dconv_comp=4, freq_emb=0)),
    ("merge_at_depth_5", dict(TINY_ARCH, depth=5, norm_starts=5, dconv_mode=3, t_heads=4)),
    ("merge_time_channels_no_transformer", dict(TINY_ARCH, depth=5, norm_starts=5,
                                                channels_time=6, t_layers=0)),
    ("mono_six_sources", dict(TINY_ARCH, audio_channels=1, bottom_channels=16,
                              t_max_period=2000.0)),
    ("unused_samplers", dict(TINY_ARCH, bottom_channels=16, t_layers=0)),
    ("no_transformer_nfft_2048", dict(TINY_ARCH, t_layers=0, nfft=2048)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", type=Path,
                        default=HERE.parents[1] / "separate/tests/fixtures/demucs-checkpoints")
    parser.add_argument("--full", action="store_true", help="also full-size htdemucs / htdemucs_6s")
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    report = Report()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        fx = args.fixtures

        signature = inspect.signature(HTDemucs.__init__).parameters
        defaults = {k: p.default for k, p in signature.items() if k not in ("self", "sources")}
        report.check(defaults == convert.HTDEMUCS_DEFAULTS,
                     "convert.HTDEMUCS_DEFAULTS equals HTDemucs.__init__'s defaults")

        for name in ("tiny", "published_small"):
            check_parity(report, fx / f"{name}.th", work, f"{name}.th (zip, float16)")
            check_parity(report, fx / f"{name}.safetensors", work, f"{name}.safetensors (float16)")
            check_parity(report, legacy_copy(fx / f"{name}.th", work / f"{name}-legacy.th"),
                         work, f"{name} legacy .th")
            check_parity(report, float32_safetensors(fx / f"{name}.th", work / f"{name}-f32.safetensors"),
                         work, f"{name}.safetensors (float32)")
        shorter = "0.2"
        check_parity(report, fx / "tiny.th", work, f"tiny.th --segment {shorter}", shorter)
        published = load_model(str(fx / "published_small.th"))
        for label, kwargs in VARIANTS:
            sources = SIX_STEMS if "six" in label else FOUR_STEMS
            path = work / f"{label}.th"
            torch.save(package(random_model(dict(kwargs, sources=sources), 5), {}), path)
            check_parity(report, path, work, f"variant {label}")

        bag_out = work / "bag"
        status, stderr, _, _ = run_convert([fx / "tiny.th", fx / "tiny.safetensors"], bag_out, "bag",
                                           "--weights", "[[1,0,0.5,0],[0,1,0.5,1]]",
                                           "--source", 'test "bag"')
        manifest = (bag_out / "manifest.toml").read_text() if status == 0 else stderr
        report.check(status == 0 and 'path = "bag.1.onnx"\nweights = [0.0, 1.0, 0.5, 1.0]' in manifest
                     and 'test \\"bag\\"' in manifest and "research purposes" in manifest,
                     "bag of two: bag.{0,1}.onnx, per-member weights, source and licence in the manifest")

        if os.path.exists(PAYLOAD_MARKER):
            os.remove(PAYLOAD_MARKER)
        check_refusal(report, "forbidden global", [fx / "forbidden_global.th"], work, "forbidden_global")
        report.check(not os.path.exists(PAYLOAD_MARKER), f"the payload did not run ({PAYLOAD_MARKER} absent)")
        check_refusal(report, "truncated .th", [fx / "truncated.th"], work, "corrupt_checkpoint")
        data = (fx / "tiny.safetensors").read_bytes()
        (work / "truncated.safetensors").write_bytes(data[: len(data) // 2])
        check_refusal(report, "truncated safetensors", [work / "truncated.safetensors"], work,
                      "corrupt_checkpoint")
        legacy = (work / "tiny-legacy.th").read_bytes()
        (work / "truncated-legacy.th").write_bytes(legacy[: len(legacy) - 1000])
        check_refusal(report, "truncated legacy .th", [work / "truncated-legacy.th"], work,
                      "corrupt_checkpoint")
        check_refusal(report, "HDemucs klass (fixture)", [fx / "hdemucs.safetensors"], work,
                      "unsupported_model")
        torch.manual_seed(0)
        hdemucs = HDemucs(sources=FOUR_STEMS, channels=4, depth=4)
        torch.save(package(hdemucs, {}), work / "hdemucs.th")
        check_refusal(report, "HDemucs .th", [work / "hdemucs.th"], work, "unsupported_model")
        tiny_st = fx / "tiny.safetensors"
        for option, value in [("multi_freqs", [0.25]), ("norm_starts", 2), ("dconv_mode", 4),
                              ("t_emb", "cape"), ("cac", False), ("t_sparse_self_attn", True),
                              ("dconv_lstm", 2), ("t_sin_random_shift", 1),
                              ("use_train_segment", False), ("t_group_norm", True)]:
            path = rewrite_safetensors(tiny_st, work / f"{option}.safetensors", {option: value})
            check_refusal(report, f"{option}={value!r}", [path], work, "unsupported_model")
        check_refusal(report, "missing tensor",
                      [rewrite_safetensors(tiny_st, work / "missing.safetensors",
                                           drop="decoder.0.conv_tr.weight")], work, "corrupt_checkpoint")
        check_refusal(report, "wrong shapes (channels 5)",
                      [rewrite_safetensors(tiny_st, work / "shape.safetensors", {"channels": 5})],
                      work, "corrupt_checkpoint")
        check_refusal(report, "missing file", [work / "nowhere.th"], work, "io_error")
        check_refusal(report, "--segment longer than the model's", [tiny_st], work,
                      "invalid_option", "--segment", "1.0")
        check_refusal(report, "bad --weights", [tiny_st], work, "invalid_option", "--weights", "[[1,2]]")
        check_refusal(report, "bag of mismatched members", [tiny_st, fx / "published_small.th"], work,
                      "invalid_option")
        check_refusal(report, "no FILE", [], work, "invalid_option")
        report.check(published.segment == Fraction(39, 5), "published_small keeps segment 39/5")

        if args.full:
            full = dict(PUBLISHED_SMALL, channels=48, bottom_channels=512)
            for name, kwargs in [("htdemucs", full),
                                 ("htdemucs_6s", dict(full, sources=SIX_STEMS, bottom_channels=0))]:
                pkg = package(random_model(kwargs, 3), {})
                torch.save(pkg, work / f"{name}.th")
                save_safetensors(pkg, work / f"{name}.safetensors")
                del pkg
                for suffix in (".th", ".safetensors"):
                    path = work / f"{name}{suffix}"
                    check_parity(report, path, work, f"full {name}{suffix} "
                                 f"({path.stat().st_size / 1e6:.1f} MB)", batch=1)

    print(f"{len(report.failures)} failure(s)" if report.failures else "all checks passed")
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
