#!/usr/bin/env python3
"""Convert official Demucs v4 (HTDemucs) checkpoints to the msaas core graph + manifest.toml,
without PyTorch: Python's standard library, numpy and onnx only (tools/requirements-convert.txt).

    python convert.py --out DIR --name NAME [--weights JSON] [--segment SECONDS]
                      [--source TEXT] FILE [FILE ...]

FILE: one checkpoint per bag member, in bag order, either a Hugging Face `.safetensors` file
(class and init arguments as JSON in its metadata) or a legacy `.th` file (`torch.save` of
{klass, args, kwargs, state, ...}, zip or the older pickle stream), recognised by content.
`.th` files are read with a restricted unpickler: only the few globals such a file needs are
resolved, to inert stand-ins, and nothing from the file is ever executed.

The graph is the one tools/demucs/export.py cuts with torch (demucs_core.CoreGraph):
HTDemucs.forward between `_magnitude` and `_mask`, inputs `mix` [B, C, L] and
`spec` [B, 2C, F, T], outputs `spec_out` [B, S, 2C, F, T] and `wave_out` [B, S, C, L]. It is
built from the checkpoint's kwargs (merged over HTDemucs.__init__'s defaults in demucs 4.1.0)
and state dict; options the builder does not implement are refused by name.

Errors: exit status 1 and one line on stderr, `[code] message`; codes in README.md.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import math
import os
import pickle
import shutil
import struct
import sys
import tempfile
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
LICENSE = ("Demucs pretrained weights (Meta Platforms): provided for research purposes only, "
           "not covered by the MIT licence of the Demucs code (maintainer, demucs issues "
           "#327 and #508); do not redistribute")

# HTDemucs.__init__'s parameters after `sources`, in signature order, with their defaults
# (demucs 4.1.0, demucs/htdemucs.py). A checkpoint's kwargs override these; the official
# files list the whole training config, but nothing guarantees that.
HTDEMUCS_DEFAULTS = {
    "audio_channels": 2, "channels": 48, "channels_time": None, "growth": 2,
    "nfft": 4096, "wiener_iters": 0, "end_iters": 0, "wiener_residual": False, "cac": True,
    "depth": 4, "rewrite": True,
    "multi_freqs": None, "multi_freqs_depth": 3, "freq_emb": 0.2, "emb_scale": 10,
    "emb_smooth": True,
    "kernel_size": 8, "time_stride": 2, "stride": 4, "context": 1, "context_enc": 0,
    "norm_starts": 4, "norm_groups": 4,
    "dconv_mode": 1, "dconv_depth": 2, "dconv_comp": 8, "dconv_init": 1e-3,
    "bottom_channels": 0,
    "t_layers": 5, "t_emb": "sin", "t_hidden_scale": 4.0, "t_heads": 8, "t_dropout": 0.0,
    "t_max_positions": 10000, "t_norm_in": True, "t_norm_in_group": False,
    "t_group_norm": False, "t_norm_first": True, "t_norm_out": True,
    "t_max_period": 10000.0, "t_weight_decay": 0.0, "t_lr": None, "t_layer_scale": True,
    "t_gelu": True, "t_weight_pos_embed": 1.0, "t_sin_random_shift": 0,
    "t_cape_mean_normalize": True, "t_cape_augment": True,
    "t_cape_glob_loc_scale": [5000.0, 1.0, 1.4],
    "t_sparse_self_attn": False, "t_sparse_cross_attn": False, "t_mask_type": "diag",
    "t_mask_random_seed": 42, "t_sparse_attn_window": 500, "t_global_window": 100,
    "t_sparsity": 0.95, "t_auto_sparsity": False,
    "t_cross_first": False,
    "rescale": 0.1,
    "samplerate": 44100, "segment": 10, "use_train_segment": True,
}
HTDEMUCS_CLASS = "demucs.htdemucs.HTDemucs"
OTHER_DEMUCS_CLASSES = {
    "demucs.hdemucs.HDemucs": "a Demucs v3 (hybrid, e.g. hdemucs_mmi) model: no transformer "
                              "and other layers, a graph this converter does not build",
    "demucs.demucs.Demucs": "a Demucs v1/v2 (waveform) model, a graph this converter does not build",
    "demucs.hdemucs.TorchHDemucsWrapper": "torchaudio's HDemucs wrapper, not an HTDemucs (v4) model",
}
# Options HTDemucs does not take but HDemucs does: a v4 file carrying them was not made for
# this graph, and demucs itself would silently drop them.
HDEMUCS_ONLY_OPTIONS = {"dconv_lstm": "LSTM layers in the DConv branch",
                        "dconv_attn": "local attention in the DConv branch"}
GROUP_NORM_EPS = 1e-5     # nn.GroupNorm / nn.LayerNorm default
NORMALISE_EPS = 1e-5      # HTDemucs.forward: (x - mean) / (1e-5 + std)


class ConvertError(Exception):
    """A refusal: `code` is stable (the Rust side maps it), the message says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def corrupt(message: str) -> ConvertError:
    return ConvertError("corrupt_checkpoint", message)


def unsupported(message: str) -> ConvertError:
    return ConvertError("unsupported_model", message)


# --------------------------------------------------------------------------------------------
# Reading checkpoints


class Checkpoint:
    def __init__(self, path: Path, klass: str, args, kwargs, state: dict[str, np.ndarray]):
        self.path = path
        self.klass = klass
        self.args = args
        self.kwargs = kwargs
        self.state = state


def read_checkpoint(path: Path) -> Checkpoint:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConvertError("io_error", f"cannot read {path}: {exc.strerror or exc}") from None
    if data.startswith(b"PK\x03\x04"):
        return read_torch_zip(path, data)
    if data.startswith(b"\x80"):  # a pickle PROTO opcode: torch's pre-1.6 stream format
        return read_torch_legacy(path, data)
    if len(data) >= 10 and data[8:9] == b"{":
        return read_safetensors(path, data)
    raise corrupt(f"{path}: neither a safetensors file nor a torch checkpoint "
                  "(zip or pickle stream); truncated or not a model")


SAFETENSORS_DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
                      "BF16": np.dtype("<u2")}


def decode_fractions(value):
    """demucs/hf.py's JSON encoding of init arguments: Fractions are tagged objects."""
    if isinstance(value, dict):
        if value.get("_type") == "fraction":
            try:
                return Fraction(int(value["numerator"]), int(value["denominator"]))
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                raise corrupt(f"bad fraction {value!r} in the metadata") from None
        return {key: decode_fractions(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_fractions(item) for item in value]
    return value


def read_safetensors(path: Path, data: bytes) -> Checkpoint:
    (header_length,) = struct.unpack("<Q", data[:8])
    if header_length > len(data) - 8:
        raise corrupt(f"{path}: safetensors header of {header_length} bytes runs past the "
                      f"end of the {len(data)}-byte file (truncated?)")
    try:
        header = json.loads(data[8:8 + header_length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"{path}: safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise corrupt(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if "structure" in metadata:
        raise unsupported(f"{path}: a nested (quantized, diffq) state; only plain float "
                          "state dicts are converted")
    try:
        klass = metadata["klass"]
        args = decode_fractions(json.loads(metadata["args"]))
        kwargs = decode_fractions(json.loads(metadata["kwargs"]))
    except KeyError as exc:
        raise corrupt(f"{path}: safetensors metadata lacks {exc.args[0]!r} (not a demucs "
                      "export?)") from None
    except (TypeError, json.JSONDecodeError) as exc:
        raise corrupt(f"{path}: safetensors metadata is not demucs's JSON ({exc})") from None
    body = memoryview(data)[8 + header_length:]
    state = {}
    for name, entry in header.items():
        try:
            dtype_name = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"{path}: bad safetensors entry for {name}") from None
        if dtype_name not in SAFETENSORS_DTYPES:
            raise unsupported(f"{path}: tensor {name} has dtype {dtype_name}, expected a float type")
        dtype = SAFETENSORS_DTYPES[dtype_name]
        if not 0 <= start <= end <= len(body):
            raise corrupt(f"{path}: tensor {name} lies past the end of the file (truncated?)")
        if end - start != math.prod(shape) * dtype.itemsize:
            raise corrupt(f"{path}: tensor {name}: {end - start} bytes for shape {list(shape)}")
        array = np.frombuffer(body[start:end], dtype=dtype).reshape(shape)
        state[name] = bfloat16_to_float32(array) if dtype_name == "BF16" else array
    return Checkpoint(path, klass, args, kwargs, state)


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


class ClassReference:
    """Stands for a demucs class named by a checkpoint (its `klass`); never instantiated."""

    def __init__(self, module: str, name: str):
        self.qualified_name = f"{module}.{name}"

    def __call__(self, *args, **kwargs):
        raise ConvertError("forbidden_global", f"the checkpoint instantiates "
                           f"{self.qualified_name}; only plain data is accepted")


class StorageType:
    """torch.<Type>Storage, named in a storage's persistent id: only its element type matters."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype


TORCH_STORAGE_DTYPES = {
    "HalfStorage": "<f2", "FloatStorage": "<f4", "DoubleStorage": "<f8", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class Storage:
    """A torch storage: a flat array of its element type, filled from the file's bytes (for
    the legacy format only after the object pickle has been read)."""

    def __init__(self, storage_type: StorageType, numel: int, flat: np.ndarray | None = None):
        self.storage_type = storage_type
        self.numel = numel
        self.flat = flat


class TensorView:
    """torch._utils._rebuild_tensor_v2's arguments: a strided view of a storage, turned into
    a numpy array once every storage's bytes are known."""

    def __init__(self, storage, offset, size, stride, requires_grad=False, hooks=None,
                 metadata=None):
        if not isinstance(storage, Storage):
            raise corrupt("a tensor without a storage")
        try:
            self.offset = int(offset)
            self.size = tuple(int(d) for d in size)
            self.stride = tuple(int(s) for s in stride)
        except (TypeError, ValueError):
            raise corrupt("a tensor with a malformed size or stride") from None
        if (len(self.size) != len(self.stride) or self.offset < 0
                or any(d < 0 for d in self.size) or any(s < 0 for s in self.stride)):
            raise corrupt("a tensor with a malformed size or stride")
        self.storage = storage

    def to_array(self) -> np.ndarray:
        flat = self.storage.flat
        if flat is None:
            raise corrupt("a tensor whose storage bytes are missing (truncated file?)")
        if math.prod(self.size) == 0:
            return np.zeros(self.size, dtype=np.float32)
        last = self.offset + sum((d - 1) * s for d, s in zip(self.size, self.stride))
        if last >= flat.size:
            raise corrupt("a tensor reaches past the end of its storage (truncated file?)")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size,
            strides=[s * flat.dtype.itemsize for s in self.stride], writeable=False)
        if self.storage.storage_type.name == "BFloat16Storage":
            return bfloat16_to_float32(np.ascontiguousarray(view))
        return np.array(view)


def rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


def latin1_bytes(text, encoding="latin1"):
    """_codecs.encode as pickle protocol 2 uses it for bytes objects; nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ConvertError("forbidden_global", "the checkpoint calls _codecs.encode other "
                           "than for a bytes literal")
    return text.encode("latin-1")


def numpy_scalar(dtype, data=None):
    """numpy's scalar reconstruction (numbers in metrics), plain dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise ConvertError("forbidden_global", "the checkpoint rebuilds a numpy object scalar")
    if len(data) != dtype.itemsize:
        raise corrupt("a numpy scalar of the wrong size")
    return np.frombuffer(data, dtype=dtype)[0]


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only what a demucs .th file holds; every other global is refused by name.
    `storage_reader(key, storage_type, numel)` makes the Storage a persistent id names."""

    def __init__(self, stream, storage_reader=None):
        super().__init__(stream)
        self.storage_reader = storage_reader
        self.storages: dict[str, Storage] = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return TensorView
        if module == "torch._utils" and name == "_rebuild_parameter":
            return rebuild_parameter
        if module == "torch" and name in TORCH_STORAGE_DTYPES:
            return StorageType(name, np.dtype(TORCH_STORAGE_DTYPES[name]))
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("fractions", "Fraction"):
            return Fraction
        if (module, name) == ("_codecs", "encode"):
            return latin1_bytes
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
            if name == "dtype":
                return np.dtype
            if name == "scalar":
                return numpy_scalar
        if module == "demucs" or module.startswith("demucs."):
            return ClassReference(module, name)
        raise ConvertError("forbidden_global", f"the checkpoint refers to {module}.{name}, "
                           "which a demucs checkpoint never needs; refused (nothing was run)")

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # The legacy format names an nn.Module class with its source code: the class only.
            if not isinstance(pid[1], ClassReference):
                raise corrupt(f"a module reference to {pid[1]!r:.80}")
            return pid[1]
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType)):
            raise corrupt(f"unknown persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if key not in self.storages:
            if self.storage_reader is None:
                raise corrupt("a storage outside the tensor data")
            self.storages[key] = self.storage_reader(key, storage_type, numel)
        return self.storages[key]


def unpickle_from(stream, storage_reader, path: Path):
    try:
        return RestrictedUnpickler(stream, storage_reader).load()
    except ConvertError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, struct.error) as exc:
        raise corrupt(f"{path}: unreadable pickle ({type(exc).__name__}: {exc}); truncated?") from None


def storage_from_bytes(raw: bytes, storage_type: StorageType, numel, what: str) -> np.ndarray:
    """`numel` elements of `raw`; a short read means a truncated file."""
    itemsize = storage_type.dtype.itemsize
    if not isinstance(numel, int) or numel < 0 or len(raw) < numel * itemsize:
        raise corrupt(f"storage {what}: {len(raw)} bytes for {numel} elements (truncated?)")
    return np.frombuffer(raw, dtype=storage_type.dtype, count=numel)


def read_torch_zip(path: Path, data: bytes) -> Checkpoint:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise corrupt(f"{path}: broken zip archive ({exc}); truncated?") from None
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise corrupt(f"{path}: expected one <archive>/data.pkl, found {len(pickles)}")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in names:
        byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
    if byteorder != "little":
        raise unsupported(f"{path}: tensors stored {byteorder}-endian")

    def read_storage(key, storage_type, numel):
        member = f"{prefix}data/{key}"
        try:
            raw = archive.read(member)
        except KeyError:
            raise corrupt(f"{path}: storage {member} is missing") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
            raise corrupt(f"{path}: storage {member} is unreadable ({exc})") from None
        return Storage(storage_type, numel, storage_from_bytes(raw, storage_type, numel, member))

    try:
        pickled = archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise corrupt(f"{path}: {pickles[0]} is unreadable ({exc})") from None
    return checkpoint_from_package(path, unpickle_from(io.BytesIO(pickled), read_storage, path))


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER


def read_torch_legacy(path: Path, data: bytes) -> Checkpoint:
    """torch.save(..., _use_new_zipfile_serialization=False): pickled magic, protocol and
    system info, the object pickle, the pickled list of storage keys, then each storage's
    bytes (an int64 element count, then the elements) in that order."""
    stream = io.BytesIO(data)
    storages: dict[str, Storage] = {}

    def declare_storage(key, storage_type, numel):
        storages[key] = Storage(storage_type, numel)
        return storages[key]

    def next_pickle(storage_reader=None):
        return unpickle_from(stream, storage_reader, path)

    if next_pickle() != LEGACY_MAGIC:
        raise corrupt(f"{path}: a pickle, but not a torch checkpoint (wrong magic number)")
    next_pickle()  # protocol version
    system = next_pickle()
    if isinstance(system, dict) and not system.get("little_endian", True):
        raise unsupported(f"{path}: tensors stored big-endian")
    package = next_pickle(declare_storage)
    keys = next_pickle()
    if not isinstance(keys, list):
        raise corrupt(f"{path}: storage key list missing")
    for key in map(str, keys):
        if key not in storages:
            raise corrupt(f"{path}: storage {key} belongs to no tensor")
        storage = storages[key]
        header = stream.read(8)
        if len(header) != 8:
            raise corrupt(f"{path}: storage {key} is missing (truncated?)")
        (count,) = struct.unpack("<q", header)
        if count != storage.numel:
            raise corrupt(f"{path}: storage {key} holds {count} elements, expected {storage.numel}")
        raw = stream.read(count * storage.storage_type.dtype.itemsize)
        storage.flat = storage_from_bytes(raw, storage.storage_type, count, key)
    return checkpoint_from_package(path, package)


def checkpoint_from_package(path: Path, package) -> Checkpoint:
    if not isinstance(package, dict) or not {"klass", "kwargs", "state"} <= set(package):
        raise corrupt(f"{path}: not a demucs package (a dict with klass, args, kwargs, state)")
    klass = package["klass"]
    if not isinstance(klass, ClassReference):
        raise corrupt(f"{path}: `klass` is not a demucs class")
    state = package["state"]
    if not isinstance(state, dict):
        raise corrupt(f"{path}: `state` is not a dict")
    if state.get("__quantized"):
        raise unsupported(f"{path}: a quantized (diffq) state; only plain float state dicts "
                          "are converted")
    arrays = {}
    for name, value in state.items():
        if not isinstance(value, TensorView):
            raise corrupt(f"{path}: state entry {name} is not a tensor")
        arrays[name] = value.to_array()
    return Checkpoint(path, klass.qualified_name, package.get("args", ()), package["kwargs"], arrays)


# --------------------------------------------------------------------------------------------
# The model's configuration


def resolve_config(checkpoint: Checkpoint, segment_override: Fraction | None) -> dict:
    """HTDemucs's init arguments as demucs would see them; refuses what the builder lacks."""
    where = checkpoint.path
    if checkpoint.klass != HTDEMUCS_CLASS:
        why = OTHER_DEMUCS_CLASSES.get(checkpoint.klass, "not a Demucs v4 model")
        raise unsupported(f"{where}: {checkpoint.klass} is {why}; only {HTDEMUCS_CLASS} (v4) "
                          "is converted")
    args, kwargs = checkpoint.args, checkpoint.kwargs
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise corrupt(f"{where}: args/kwargs are not a list and a dict")
    names = ["sources", *HTDEMUCS_DEFAULTS]
    if len(args) > len(names):
        raise corrupt(f"{where}: {len(args)} positional arguments for HTDemucs")
    config = dict(HTDEMUCS_DEFAULTS)
    config.update(zip(names, args))
    for key, value in kwargs.items():
        if key in HDEMUCS_ONLY_OPTIONS and value:
            raise unsupported(f"{where}: {key}={value!r} ({HDEMUCS_ONLY_OPTIONS[key]}) is not "
                              "part of HTDemucs and not implemented")
        if key in names[: len(args)]:
            raise corrupt(f"{where}: {key} given both positionally and by name")
        if key in names:  # demucs drops (with a warning) what HTDemucs does not take
            config[key] = value
    if "sources" not in config:
        raise corrupt(f"{where}: no `sources` in the init arguments")
    if segment_override is not None:
        # BagOfModels(segment=...) only ever shortens an HTDemucs's segment.
        if isinstance(config["segment"], (int, float, Fraction)) and segment_override > config["segment"]:
            raise ConvertError("invalid_option", f"--segment {float(segment_override)} is longer "
                               f"than the model's {float(config['segment'])} s training "
                               "segment, which demucs keeps")
        config["segment"] = segment_override
    check_config(config, where)
    return config


def check_config(c: dict, where: Path) -> None:
    def need_int(key, low):
        value = c[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise corrupt(f"{where}: {key}={value!r} is not an integer ≥ {low}")

    for key, low in [("audio_channels", 1), ("channels", 1), ("nfft", 8), ("depth", 1),
                     ("kernel_size", 1), ("stride", 1), ("context", 0), ("context_enc", 0),
                     ("dconv_comp", 1), ("t_layers", 0), ("t_heads", 1), ("samplerate", 1),
                     ("bottom_channels", 0), ("norm_starts", 0)]:
        need_int(key, low)
    if c["channels_time"] is not None:
        need_int("channels_time", 1)
    if not isinstance(c["dconv_depth"], int) or isinstance(c["dconv_depth"], bool):
        raise corrupt(f"{where}: dconv_depth={c['dconv_depth']!r} is not an integer")
    sources = c["sources"]
    if not (isinstance(sources, (list, tuple)) and sources
            and all(isinstance(s, str) for s in sources) and len(set(sources)) == len(sources)):
        raise corrupt(f"{where}: sources={sources!r} is not a list of distinct names")
    for source in sources:
        if not source or not all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in source):
            raise unsupported(f"{where}: source name {source!r} is not usable as a stem name "
                              "(ASCII letters, digits, '_' or '-')")
    # Kept as given (Fraction, int or float): int(segment * samplerate) must be computed in
    # the same arithmetic as demucs (int(Fraction(7.8) * 44100) is 343979, not 343980).
    segment = c["segment"]
    if isinstance(segment, bool) or not isinstance(segment, (int, float, Fraction)) or not segment > 0:
        raise corrupt(f"{where}: segment={segment!r} is not a positive number")
    if int(segment * c["samplerate"]) < c["nfft"]:
        raise ConvertError("invalid_option", f"{where}: a segment of {float(segment)} s is "
                           "shorter than one STFT window")

    def refuse(option, why):
        raise unsupported(f"{where}: {option}={c[option]!r}: {why}, not implemented")

    if not c["cac"]:
        refuse("cac", "a magnitude-mask model (Wiener filtering outside the graph)")
    if c["nfft"] & (c["nfft"] - 1):
        refuse("nfft", "not a power of two")
    if c["multi_freqs"]:
        refuse("multi_freqs", "frequency bands split with MultiWrap")
    if c["norm_starts"] < c["depth"]:
        refuse("norm_starts", f"GroupNorm in the encoder/decoder layers from layer "
               f"{c['norm_starts']} of {c['depth']}")
    if c["dconv_mode"] not in (0, 1, 2, 3):
        refuse("dconv_mode", "expected 0-3 (bit 1: DConv in the encoder, bit 2: in the decoder)")
    if not c["use_train_segment"]:
        refuse("use_train_segment", "chunks would run at their own length, the graph has a "
               "fixed one")
    if not isinstance(c["rewrite"], bool):
        refuse("rewrite", "expected true or false")
    if c["t_layers"]:
        if c["t_emb"] != "sin":
            refuse("t_emb", "only the sinusoidal position embedding is built")
        if c["t_sin_random_shift"]:
            refuse("t_sin_random_shift", "a random position shift at inference")
        for option in ("t_sparse_self_attn", "t_sparse_cross_attn"):
            if c[option]:
                refuse(option, "sparse attention (xformers)")
        if not c["t_norm_in"] and c["t_norm_in_group"]:
            refuse("t_norm_in_group", "GroupNorm before the transformer")
        if c["t_group_norm"]:
            refuse("t_group_norm", "GroupNorm inside the transformer layers")
        if c["t_norm_first"] and c["t_norm_out"] and int(c["t_norm_out"]) != 1:
            refuse("t_norm_out", "a GroupNorm with more than one group after each layer")


def plan_layers(c: dict) -> tuple[list[dict], int]:
    """The encoder layers as HTDemucs.__init__ builds them (decoders mirror them), and the
    frequency bins after the first one (the frequency embedding's size)."""
    sources = len(c["sources"])
    chin = c["audio_channels"]
    chin_z = 2 * chin
    chout = c["channels_time"] or c["channels"]
    chout_z = c["channels"]
    freqs = c["nfft"] // 2
    kernel, stride = c["kernel_size"], c["stride"]
    layers = []
    emb_freqs = 0
    for index in range(c["depth"]):
        if freqs <= 1:
            raise unsupported(f"depth={c['depth']} with nfft={c['nfft']}: layers after the "
                              "frequency axis is used up (time_stride layers) are not implemented")
        merge = freqs <= kernel  # the last frequency layer: time branch injected, then one branch
        freq_kernel = freqs if merge else kernel
        if merge:
            chout_z = max(chout, chout_z)
            chout = chout_z
        layers.append(dict(
            index=index, merge=merge, freq_kernel=freq_kernel, stride=stride,
            freq_pad=0 if merge else freq_kernel // 4, time_kernel=kernel, time_pad=kernel // 4,
            enc_in_z=chin_z, enc_out_z=chout_z, enc_in_t=chin, enc_out_t=chout,
            dec_out_z=2 * sources * c["audio_channels"] if index == 0 else chin_z,
            dec_out_t=sources * c["audio_channels"] if index == 0 else chin,
            last=index == 0))
        chin, chin_z = chout, chout_z
        chout, chout_z = int(c["growth"] * chout), int(c["growth"] * chout_z)
        freqs = 1 if freqs <= kernel else freqs // stride
        if index == 0 and c["freq_emb"]:
            emb_freqs = freqs
    return layers, emb_freqs


# --------------------------------------------------------------------------------------------
# Building the ONNX graph


class Weights:
    """The checkpoint's state dict, handed out by name with the shape the config implies."""

    def __init__(self, state: dict[str, np.ndarray], where: Path):
        self.state = state
        self.where = where
        self.used: set[str] = set()

    def take(self, name: str, shape) -> np.ndarray:
        if name not in self.state:
            raise corrupt(f"{self.where}: tensor {name} is missing")
        array = self.state[name]
        if tuple(array.shape) != tuple(shape):
            raise corrupt(f"{self.where}: tensor {name} has shape {list(array.shape)}, the "
                          f"configuration implies {list(shape)}")
        if array.dtype.kind != "f":
            raise corrupt(f"{self.where}: tensor {name} is {array.dtype}, not floating point")
        self.used.add(name)
        return np.ascontiguousarray(array, dtype=np.float32)

    def check_all_used(self) -> None:
        extra = sorted(set(self.state) - self.used)
        if extra:
            shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
            raise unsupported(f"{self.where}: the state holds tensors this configuration does "
                              f"not explain ({shown}): a structure the converter does not know")


class GraphBuilder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: collections.Counter = collections.Counter()

    def fresh(self, hint: str) -> str:
        self.names[hint] += 1
        return hint if self.names[hint] == 1 else f"{hint}_{self.names[hint]}"

    def const(self, array, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, values, hint="shape") -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def scalar(self, value: float) -> str:
        return self.const(np.asarray(value, dtype=np.float32), "scalar")

    def op(self, op_type: str, inputs: list[str], hint: str, outputs: int = 1,
           output_name: str | None = None, **attrs):
        names = [output_name] if output_name else [
            self.fresh(f"{hint}.{op_type}" if outputs == 1 else f"{hint}.{op_type}.{i}")
            for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names

    # -- building blocks

    def gelu(self, x: str, hint: str) -> str:
        """Exact GELU (erf), as nn.GELU / F.gelu default."""
        erf = self.op("Erf", [self.op("Mul", [x, self.scalar(1 / math.sqrt(2))], hint)], hint)
        one_plus = self.op("Add", [erf, self.scalar(1.0)], hint)
        return self.op("Mul", [self.op("Mul", [x, self.scalar(0.5)], hint), one_plus], hint)

    def glu(self, x: str, hint: str) -> str:
        """F.glu(x, dim=1): first half times sigmoid of the second."""
        a, b = self.op("Split", [x], hint, outputs=2, axis=1)
        return self.op("Mul", [a, self.op("Sigmoid", [b], hint)], hint)

    def normalise(self, x: str, axes: list[int], hint: str) -> str:
        """(x - mean) / sqrt(var + eps) over `axes` (biased variance): GroupNorm(1). The
        statistics are summed in float64: DConv normalises ~10^5-10^6 values of the time
        branch, where a float32 sum drifts by ~1e-4 (torch sums in cascades)."""
        wide = self.op("Cast", [x], hint, to=TensorProto.DOUBLE)
        mean = self.op("ReduceMean", [wide], hint, axes=axes)
        centred = self.op("Sub", [wide, mean], hint)
        variance = self.op("ReduceMean", [self.op("Mul", [centred, centred], hint)], hint, axes=axes)
        eps = self.const(np.asarray(GROUP_NORM_EPS, dtype=np.float64), "eps")
        std = self.op("Sqrt", [self.op("Add", [variance, eps], hint)], hint)
        return self.op("Cast", [self.op("Div", [centred, std], hint)], hint, to=TensorProto.FLOAT)

    def affine(self, x: str, weight: np.ndarray, bias: np.ndarray, hint: str) -> str:
        scaled = self.op("Mul", [x, self.const(weight, f"{hint}.weight")], hint)
        return self.op("Add", [scaled, self.const(bias, f"{hint}.bias")], hint)

    def conv(self, x: str, w: Weights, key: str, shape, transposed=False, **attrs) -> str:
        weight = w.take(f"{key}.weight", shape)
        out_channels = shape[1] if transposed else shape[0]
        bias = w.take(f"{key}.bias", [out_channels])
        inputs = [x, self.const(weight, f"{key}.weight"), self.const(bias, f"{key}.bias")]
        return self.op("ConvTranspose" if transposed else "Conv", inputs, key,
                       kernel_shape=list(shape[2:]), **attrs)

    def linear(self, x: str, w: Weights, key: str, out_dim: int, in_dim: int) -> str:
        weight = w.take(f"{key}.weight", [out_dim, in_dim])
        bias = w.take(f"{key}.bias", [out_dim])
        product = self.op("MatMul", [x, self.const(weight.T.copy(), f"{key}.weight_t")], key)
        return self.op("Add", [product, self.const(bias, f"{key}.bias")], key)

    def slice(self, x: str, axis: int, start: int, end: int, hint: str) -> str:
        return self.op("Slice", [x, self.ints([start]), self.ints([end]), self.ints([axis])], hint)


def dconv(g: GraphBuilder, w: Weights, x: str, key: str, channels: int, c: dict) -> str:
    """demucs.demucs.DConv on [N, C, T]: residual layers of dilated conv → GroupNorm(1) → GELU
    → 1x1 conv → GroupNorm(1) → GLU → LayerScale."""
    hidden = int(channels / c["dconv_comp"])
    for j in range(abs(c["dconv_depth"])):
        dilation = 2 ** j if c["dconv_depth"] > 0 else 1
        prefix = f"{key}.dconv.layers.{j}"
        y = g.conv(x, w, f"{prefix}.0", [hidden, channels, 3], dilations=[dilation],
                   pads=[dilation, dilation])
        y = g.affine(g.normalise(y, [1, 2], f"{prefix}.1"), w.take(f"{prefix}.1.weight", [hidden])[:, None],
                     w.take(f"{prefix}.1.bias", [hidden])[:, None], f"{prefix}.1")
        y = g.gelu(y, f"{prefix}.2")
        y = g.conv(y, w, f"{prefix}.3", [2 * channels, hidden, 1])
        y = g.affine(g.normalise(y, [1, 2], f"{prefix}.4"),
                     w.take(f"{prefix}.4.weight", [2 * channels])[:, None],
                     w.take(f"{prefix}.4.bias", [2 * channels])[:, None], f"{prefix}.4")
        y = g.glu(y, f"{prefix}.5")
        y = g.op("Mul", [y, g.const(w.take(f"{prefix}.6.scale", [channels])[:, None],
                                    f"{prefix}.6.scale")], prefix)
        x = g.op("Add", [x, y], prefix)
    return x


def dconv_over_frequencies(g, w, x, key, channels, freqs, frames, c) -> str:
    """A frequency layer's DConv runs on [B*F, C, T]."""
    y = g.op("Reshape", [g.op("Transpose", [x], key, perm=[0, 2, 1, 3]),
                         g.ints([-1, channels, frames])], key)
    y = dconv(g, w, y, key, channels, c)
    y = g.op("Reshape", [y, g.ints([-1, freqs, channels, frames])], key)
    return g.op("Transpose", [y], key, perm=[0, 2, 1, 3])


def encode_frequency(g, w, x, layer, shape, inject, c):
    """HEncLayer(freq=True); `shape` is (C, F, T) of x; returns the output and its shape."""
    key = f"encoder.{layer['index']}"
    cin, cout = layer["enc_in_z"], layer["enc_out_z"]
    k, s, p = layer["freq_kernel"], layer["stride"], layer["freq_pad"]
    y = g.conv(x, w, f"{key}.conv", [cout, cin, k, 1], strides=[s, 1], pads=[p, 0, p, 0])
    freqs = (shape[1] + 2 * p - k) // s + 1
    frames = shape[2]
    if inject is not None:
        y = g.op("Add", [y, g.op("Unsqueeze", [inject, g.ints([2])], key)], key)
    y = g.gelu(y, key)
    if c["dconv_mode"] & 1:
        y = dconv_over_frequencies(g, w, y, key, cout, freqs, frames, c)
    if c["rewrite"]:
        ctx = c["context_enc"]
        y = g.glu(g.conv(y, w, f"{key}.rewrite", [2 * cout, cout, 1 + 2 * ctx, 1 + 2 * ctx],
                         pads=[ctx] * 4), key)
    return y, (cout, freqs, frames)


def encode_time(g, w, x, layer, shape, c):
    """HEncLayer(freq=False) of the time branch; `shape` is (C, L). A merging layer
    (`empty`) is its first conv only: the result is injected into the frequency branch."""
    key = f"tencoder.{layer['index']}"
    cin, cout = layer["enc_in_t"], layer["enc_out_t"]
    k, s, p = layer["time_kernel"], layer["stride"], layer["time_pad"]
    length = shape[1]
    if length % s:
        x = g.op("Pad", [x, g.ints([0, 0, 0, 0, 0, s - length % s])], key)
        length += s - length % s
    y = g.conv(x, w, f"{key}.conv", [cout, cin, k], strides=[s], pads=[p, p])
    length = (length + 2 * p - k) // s + 1
    if layer["merge"]:
        return y, (cout, length)
    y = g.gelu(y, key)
    if c["dconv_mode"] & 1:
        y = dconv(g, w, y, key, cout, c)
    if c["rewrite"]:
        ctx = c["context_enc"]
        y = g.glu(g.conv(y, w, f"{key}.rewrite", [2 * cout, cout, 1 + 2 * ctx], pads=[ctx, ctx]), key)
    return y, (cout, length)


def decode_frequency(g, w, x, skip, layer, decoder_index, shape, c):
    """HDecLayer(freq=True); returns the output, its shape and `pre` (before conv_tr)."""
    key = f"decoder.{decoder_index}"
    cin, cout = layer["enc_out_z"], layer["dec_out_z"]
    k, s, p = layer["freq_kernel"], layer["stride"], layer["freq_pad"]
    _, freqs, frames = shape
    y = g.op("Add", [x, skip], key)
    if c["rewrite"]:
        ctx = c["context"]
        y = g.glu(g.conv(y, w, f"{key}.rewrite", [2 * cin, cin, 1 + 2 * ctx, 1 + 2 * ctx],
                         pads=[ctx] * 4), key)
    if c["dconv_mode"] & 2:
        y = dconv_over_frequencies(g, w, y, key, cin, freqs, frames, c)
    pre = y
    z = g.conv(y, w, f"{key}.conv_tr", [cin, cout, k, 1], transposed=True, strides=[s, 1])
    out_freqs = (freqs - 1) * s + k
    if p:
        z = g.slice(z, 2, p, out_freqs - p, key)
        out_freqs -= 2 * p
    if not layer["last"]:
        z = g.gelu(z, key)
    return z, (cout, out_freqs, frames), pre


def decode_time(g, w, x, skip, layer, decoder_index, length, c):
    """HDecLayer(freq=False), cropped to the encoder's input `length`; a merging layer
    (`empty`) takes `pre` of the frequency decoder and is its transposed conv only."""
    key = f"tdecoder.{decoder_index}"
    cin, cout = layer["enc_out_t"], layer["dec_out_t"]
    k, s, p = layer["time_kernel"], layer["stride"], layer["time_pad"]
    y = x
    if not layer["merge"]:
        y = g.op("Add", [x, skip], key)
        if c["rewrite"]:
            ctx = c["context"]
            y = g.glu(g.conv(y, w, f"{key}.rewrite", [2 * cin, cin, 1 + 2 * ctx], pads=[ctx, ctx]), key)
        if c["dconv_mode"] & 2:
            y = dconv(g, w, y, key, cin, c)
    z = g.conv(y, w, f"{key}.conv_tr", [cin, cout, k], transposed=True, strides=[s])
    z = g.slice(z, 2, p, p + length, key)
    if not layer["last"]:
        z = g.gelu(z, key)
    return z


def correctly_rounded(function, x: np.ndarray) -> np.ndarray:
    """function(x) for float32 x, rounded once to float32 as torch's CPU kernels do (numpy's
    float32 pow/exp can be an ulp off, which at positions ~1000 moves a phase by 1e-4)."""
    return function(x.astype(np.float64)).astype(np.float32)


def sin_embedding(length: int, dim: int, max_period: float) -> np.ndarray:
    """transformer.create_sin_embedding (shift 0), [length, dim], in torch's float32 steps."""
    half = dim // 2
    position = np.arange(length, dtype=np.float32)[:, None]
    exponent = np.arange(half, dtype=np.float32) / np.float32(half - 1)
    phase = position / correctly_rounded(lambda e: np.power(max_period, e), exponent)
    return np.concatenate([correctly_rounded(np.cos, phase), correctly_rounded(np.sin, phase)], axis=1)


def sin_embedding_2d(dim: int, height: int, width: int, max_period: float) -> np.ndarray:
    """transformer.create_2d_sin_embedding, [dim, height, width], in torch's float32 steps."""
    half = dim // 2
    div_term = correctly_rounded(np.exp, np.arange(0, half, 2, dtype=np.float32)
                                 * np.float32(-(math.log(max_period) / half)))
    along_w = np.arange(width, dtype=np.float32)[:, None] * div_term   # [W, half/2]
    along_h = np.arange(height, dtype=np.float32)[:, None] * div_term  # [H, half/2]
    pe = np.zeros((dim, height, width), dtype=np.float32)
    pe[0:half:2] = correctly_rounded(np.sin, along_w).T[:, None, :]
    pe[1:half:2] = correctly_rounded(np.cos, along_w).T[:, None, :]
    pe[half::2] = correctly_rounded(np.sin, along_h).T[:, :, None]
    pe[half + 1::2] = correctly_rounded(np.cos, along_h).T[:, :, None]
    return pe


def attention(g, w, query, key_value, prefix, dim, heads, q_len, kv_len):
    """nn.MultiheadAttention (batch first, packed in-projection, no mask) on [B, N, D]."""
    in_weight = w.take(f"{prefix}.in_proj_weight", [3 * dim, dim])
    in_bias = w.take(f"{prefix}.in_proj_bias", [3 * dim])
    head_dim = dim // heads

    def project(x, part, length, perm):
        rows = slice(part * dim, (part + 1) * dim)
        y = g.op("MatMul", [x, g.const(in_weight[rows].T.copy(), f"{prefix}.w{'qkv'[part]}")], prefix)
        y = g.op("Add", [y, g.const(in_bias[rows], f"{prefix}.b{'qkv'[part]}")], prefix)
        y = g.op("Reshape", [y, g.ints([-1, length, heads, head_dim])], prefix)
        return g.op("Transpose", [y], prefix, perm=perm)

    q = project(query, 0, q_len, [0, 2, 1, 3])            # [B, H, N, d]
    k = project(key_value, 1, kv_len, [0, 2, 3, 1])       # [B, H, d, M]
    v = project(key_value, 2, kv_len, [0, 2, 1, 3])       # [B, H, M, d]
    q = g.op("Mul", [q, g.scalar(1 / math.sqrt(head_dim))], prefix)
    weights = g.op("Softmax", [g.op("MatMul", [q, k], prefix)], prefix, axis=-1)
    out = g.op("Transpose", [g.op("MatMul", [weights, v], prefix)], prefix, perm=[0, 2, 1, 3])
    out = g.op("Reshape", [out, g.ints([-1, q_len, dim])], prefix)
    return g.linear(out, w, f"{prefix}.out_proj", dim, dim)


def transformer_layer(g, w, x, other, prefix, c, dim, length, other_length):
    """MyTransformerEncoderLayer (other is None) or CrossTransformerEncoderLayer on [B, N, D]."""
    hidden = int(dim * c["t_hidden_scale"])
    cross = other is not None

    def layer_norm(y, name):
        return g.op("LayerNormalization",
                    [y, g.const(w.take(f"{prefix}.{name}.weight", [dim]), f"{prefix}.{name}.weight"),
                     g.const(w.take(f"{prefix}.{name}.bias", [dim]), f"{prefix}.{name}.bias")],
                    f"{prefix}.{name}", axis=-1, epsilon=GROUP_NORM_EPS)

    def feed_forward(y):
        y = g.linear(y, w, f"{prefix}.linear1", hidden, dim)
        y = g.gelu(y, prefix) if c["t_gelu"] else g.op("Relu", [y], prefix)
        return g.linear(y, w, f"{prefix}.linear2", dim, hidden)

    def layer_scale(y, name):
        if not c["t_layer_scale"]:
            return y
        return g.op("Mul", [y, g.const(w.take(f"{prefix}.{name}.scale", [dim]), f"{prefix}.{name}")], prefix)

    attn = f"{prefix}.cross_attn" if cross else f"{prefix}.self_attn"
    heads = c["t_heads"]
    if c["t_norm_first"]:
        if cross:
            mixed = attention(g, w, layer_norm(x, "norm1"), layer_norm(other, "norm2"), attn, dim,
                              heads, length, other_length)
        else:
            normed = layer_norm(x, "norm1")
            mixed = attention(g, w, normed, normed, attn, dim, heads, length, length)
        x = g.op("Add", [x, layer_scale(mixed, "gamma_1")], prefix)
        x = g.op("Add", [x, layer_scale(feed_forward(layer_norm(x, "norm3" if cross else "norm2")),
                                        "gamma_2")], prefix)
        if c["t_norm_out"]:
            key = f"{prefix}.norm_out"
            x = g.affine(g.normalise(x, [1, 2], key), w.take(f"{key}.weight", [dim]),
                         w.take(f"{key}.bias", [dim]), key)
        return x
    mixed = attention(g, w, x, other if cross else x, attn, dim, heads, length,
                      other_length if cross else length)
    x = layer_norm(g.op("Add", [x, layer_scale(mixed, "gamma_1")], prefix), "norm1")
    x = layer_norm(g.op("Add", [x, layer_scale(feed_forward(x), "gamma_2")], prefix), "norm2")
    if cross:  # norm3 is only used before the feed-forward of pre-norm layers
        w.take(f"{prefix}.norm3.weight", [dim])
        w.take(f"{prefix}.norm3.bias", [dim])
    return x


def cross_transformer(g, w, x, xt, c, dim, freq_shape, time_shape):
    """CrossTransformerEncoder: x [B, D, F, T1] as (t1 f) tokens, xt [B, D, T2]."""
    _, freqs, frames = freq_shape
    _, length_t = time_shape
    tokens = frames * freqs
    key = "crosstransformer"
    weight_pos = np.float32(c["t_weight_pos_embed"])
    period = float(c["t_max_period"])

    def norm_in(y, name):
        if not c["t_norm_in"]:
            return y
        return g.op("LayerNormalization",
                    [y, g.const(w.take(f"{key}.{name}.weight", [dim]), f"{key}.{name}.weight"),
                     g.const(w.take(f"{key}.{name}.bias", [dim]), f"{key}.{name}.bias")],
                    f"{key}.{name}", axis=-1, epsilon=GROUP_NORM_EPS)

    x = g.op("Reshape", [g.op("Transpose", [x], key, perm=[0, 3, 2, 1]), g.ints([-1, tokens, dim])], key)
    pos_2d = sin_embedding_2d(dim, freqs, frames, period).transpose(2, 1, 0).reshape(1, tokens, dim)
    x = g.op("Add", [norm_in(x, "norm_in"), g.const(weight_pos * pos_2d, f"{key}.pos_2d")], key)
    xt = g.op("Transpose", [xt], key, perm=[0, 2, 1])
    pos_1d = sin_embedding(length_t, dim, period)[None]
    xt = g.op("Add", [norm_in(xt, "norm_in_t"), g.const(weight_pos * pos_1d, f"{key}.pos_1d")], key)
    classic_parity = 1 if c["t_cross_first"] else 0
    for index in range(c["t_layers"]):
        freq_layer, time_layer = f"{key}.layers.{index}", f"{key}.layers_t.{index}"
        if index % 2 == classic_parity:
            x = transformer_layer(g, w, x, None, freq_layer, c, dim, tokens, tokens)
            xt = transformer_layer(g, w, xt, None, time_layer, c, dim, length_t, length_t)
        else:  # each branch attends to the other's input of this layer
            x, xt = (transformer_layer(g, w, x, xt, freq_layer, c, dim, tokens, length_t),
                     transformer_layer(g, w, xt, x, time_layer, c, dim, length_t, tokens))
    x = g.op("Transpose", [g.op("Reshape", [x, g.ints([-1, frames, freqs, dim])], key)], key,
             perm=[0, 3, 2, 1])
    xt = g.op("Transpose", [xt], key, perm=[0, 2, 1])
    return x, xt


def standardise(g, x, axes, count, hint):
    """(x - mean) / (1e-5 + std), std unbiased, as HTDemucs.forward; returns mean and std too.
    The statistics are summed in float64: over millions of values a float32 sum drifts by
    ~1e-4, which the de-normalisation would carry into every output sample."""
    wide = g.op("Cast", [x], hint, to=TensorProto.DOUBLE)
    mean = g.op("ReduceMean", [wide], hint, axes=axes)
    centred = g.op("Sub", [wide, mean], hint)
    sum_sq = g.op("ReduceSum", [g.op("Mul", [centred, centred], hint), g.ints(axes)], hint)
    variance = g.op("Div", [sum_sq, g.const(np.asarray(count - 1, dtype=np.float64), "count")], hint)
    std = g.op("Cast", [g.op("Sqrt", [variance], hint)], hint, to=TensorProto.FLOAT)
    mean = g.op("Cast", [mean], hint, to=TensorProto.FLOAT)
    normalised = g.op("Div", [g.op("Sub", [x, mean], hint), g.op("Add", [std, g.scalar(NORMALISE_EPS)], hint)], hint)
    return normalised, mean, std


def build_core_graph(c: dict, state: dict[str, np.ndarray], where: Path) -> onnx.ModelProto:
    w = Weights(state, where)
    g = GraphBuilder()
    layers, emb_freqs = plan_layers(c)
    channels = c["audio_channels"]
    sources = len(c["sources"])
    length = int(c["segment"] * c["samplerate"])
    hop = c["nfft"] // 4
    frames = math.ceil(length / hop)
    bins = c["nfft"] // 2

    x, mean, std = standardise(g, "spec", [1, 2, 3], 2 * channels * bins * frames, "norm_spec")
    xt, mean_t, std_t = standardise(g, "mix", [1, 2], channels * length, "norm_mix")
    shape, shape_t = (2 * channels, bins, frames), (channels, length)
    saved, saved_t, lengths_t = [], [], []
    for layer in layers:
        lengths_t.append(shape_t[1])
        xt, shape_t = encode_time(g, w, xt, layer, shape_t, c)
        inject = None
        if layer["merge"]:
            inject = xt
        else:
            saved_t.append(xt)
        x, shape = encode_frequency(g, w, x, layer, shape, inject, c)
        if layer["index"] == 0 and c["freq_emb"]:
            table = w.take("freq_emb.embedding.weight", [emb_freqs, shape[0]])
            # ScaledEmbedding: embedding * emb_scale, then * freq_emb, in torch's float32 steps.
            emb = (table * np.float32(c["emb_scale"])) * np.float32(c["freq_emb"])
            x = g.op("Add", [x, g.const(emb.T[None, :, :, None].copy(), "freq_emb")], "freq_emb")
        saved.append(x)
    merged = layers[-1]["merge"]
    if merged and shape[1] != 1:
        raise unsupported(f"{where}: the branches merge with {shape[1]} frequency bins left")
    bottom = c["bottom_channels"]
    if bottom and not c["t_layers"]:  # built by HTDemucs, unused without a transformer
        for sampler, (rows, cols) in [("channel_upsampler", (bottom, shape[0])),
                                      ("channel_downsampler", (shape[0], bottom)),
                                      ("channel_upsampler_t", (bottom, shape_t[0])),
                                      ("channel_downsampler_t", (shape_t[0], bottom))]:
            w.take(f"{sampler}.weight", [rows, cols, 1])
            w.take(f"{sampler}.bias", [rows])
    if c["t_layers"]:
        dim = shape[0]
        if bottom:
            flat = g.op("Reshape", [x, g.ints([-1, dim, shape[1] * shape[2]])], "bottom")
            flat = g.conv(flat, w, "channel_upsampler", [bottom, dim, 1])
            x = g.op("Reshape", [flat, g.ints([-1, bottom, shape[1], shape[2]])], "bottom")
            xt = g.conv(xt, w, "channel_upsampler_t", [bottom, shape_t[0], 1])
            dim = bottom
        if dim % c["t_heads"] or dim % 4:
            raise unsupported(f"{where}: transformer width {dim} is not a multiple of "
                              f"t_heads={c['t_heads']} and of 4")
        x, xt = cross_transformer(g, w, x, xt, c, dim, (dim, shape[1], shape[2]), (dim, shape_t[1]))
        if bottom:
            flat = g.op("Reshape", [x, g.ints([-1, bottom, shape[1] * shape[2]])], "bottom")
            flat = g.conv(flat, w, "channel_downsampler", [shape[0], bottom, 1])
            x = g.op("Reshape", [flat, g.ints([-1, shape[0], shape[1], shape[2]])], "bottom")
            xt = g.conv(xt, w, "channel_downsampler_t", [shape_t[0], bottom, 1])
    for decoder_index, layer in enumerate(reversed(layers)):
        skip = saved.pop()
        x, shape, pre = decode_frequency(g, w, x, skip, layer, decoder_index, shape, c)
        length_t = lengths_t.pop()
        if layer["merge"]:
            xt = decode_time(g, w, g.op("Squeeze", [pre, g.ints([2])], "merge"), None, layer,
                             decoder_index, length_t, c)
        else:
            xt = decode_time(g, w, xt, saved_t.pop(), layer, decoder_index, length_t, c)

    x = g.op("Add", [g.op("Mul", [x, std], "denorm_spec"), mean], "denorm_spec")
    g.op("Reshape", [x, g.ints([-1, sources, 2 * channels, bins, frames])], "spec_out",
         output_name="spec_out")
    xt = g.op("Add", [g.op("Mul", [xt, std_t], "denorm_mix"), mean_t], "denorm_mix")
    g.op("Reshape", [xt, g.ints([-1, sources, channels, length])], "wave_out",
         output_name="wave_out")
    w.check_all_used()

    inputs = [helper.make_tensor_value_info("mix", TensorProto.FLOAT, ["batch", channels, length]),
              helper.make_tensor_value_info("spec", TensorProto.FLOAT,
                                            ["batch", 2 * channels, bins, frames])]
    outputs = [helper.make_tensor_value_info("spec_out", TensorProto.FLOAT,
                                             ["batch", sources, 2 * channels, bins, frames]),
               helper.make_tensor_value_info("wave_out", TensorProto.FLOAT,
                                             ["batch", sources, channels, length])]
    graph = helper.make_graph(g.nodes, "htdemucs_core", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="msaas tools/demucs/convert.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------------------------
# Output


def toml_string(text: str) -> str:
    escaped = []
    for ch in text:
        if ch in '"\\':
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\u{ord(ch):04x}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def manifest_text(name: str, config: dict, files: list[str], weights: list[list[float]],
                  description: str, digests: list[str]) -> str:
    """manifest.toml in separate/src/manifest.rs's format, as demucs_core.write_manifest
    writes it, plus the weights' licence and where they came from."""
    lines = [
        "# Converted by tools/demucs/convert.py; checkpoint sha256: " + " ".join(digests),
        f"name = {toml_string(name)}",
        'family = "demucs"',
        f"description = {toml_string(description)}",
        f"license = {toml_string(LICENSE)}",
        f"sources = [{', '.join(toml_string(s) for s in config['sources'])}]",
        f"sample_rate = {config['samplerate']}",
        f"audio_channels = {config['audio_channels']}",
        f"segment = {float(config['segment'])!r}",
        "",
        "[stft]",
        f"n_fft = {config['nfft']}",
        f"hop = {config['nfft'] // 4}",
        "center = true",
        'pad_mode = "reflect"',
        "normalized = true",
        "",
        "[demucs]",
        "# int(segment * sample_rate): the exact chunk length the graphs were exported for",
        f"segment_samples = {int(config['segment'] * config['samplerate'])}",
        "",
    ]
    for file, member_weights in zip(files, weights):
        lines += ["[[files]]", f"path = {toml_string(file)}",
                  f"weights = [{', '.join(repr(float(x)) for x in member_weights)}]", ""]
    return "\n".join(lines)


def parse_weights(text: str | None, members: int, sources: int) -> list[list[float]]:
    if text is None:
        return [[1.0] * sources for _ in range(members)]
    try:
        weights = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConvertError("invalid_option", f"--weights is not JSON ({exc})") from None
    shape_ok = (isinstance(weights, list) and len(weights) == members
                and all(isinstance(row, list) and len(row) == sources for row in weights))
    if not shape_ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                               and math.isfinite(v) for row in weights for v in row):
        raise ConvertError("invalid_option", f"--weights must be {members} lists of {sources} "
                           "finite numbers (one list per FILE, one number per source)")
    return [[float(v) for v in row] for row in weights]


def parse_segment(text: str | None) -> Fraction | float | None:
    """`39/5` is a Fraction (as in a .th), `7.8` a float (as a bag yaml loads it)."""
    if text is None:
        return None
    try:
        segment = Fraction(text) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise ConvertError("invalid_option", f"--segment {text!r} is not a number of seconds") from None
    if not (segment > 0 and math.isfinite(segment)):
        raise ConvertError("invalid_option", f"--segment must be a positive number of seconds, got {text}")
    return segment


BAG_INVARIANTS = ("sources", "samplerate", "audio_channels", "nfft", "segment_samples")


def convert(files: list[Path], out_dir: Path, name: str, weights_json: str | None,
            segment_text: str | None, source: str | None) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConvertError("invalid_option", f"--name {name!r} must be a plain file name")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConvertError("invalid_option", f"--out {out_dir} exists and is not an empty directory")
    segment = parse_segment(segment_text)
    checkpoints = [read_checkpoint(path) for path in files]
    configs = [resolve_config(ck, segment) for ck in checkpoints]
    for config in configs:
        config["segment_samples"] = int(config["segment"] * config["samplerate"])
    for ck, config in zip(checkpoints[1:], configs[1:]):
        for key in BAG_INVARIANTS:
            if config[key] != configs[0][key]:
                raise ConvertError("invalid_option", f"bag members disagree on {key}: "
                                   f"{configs[0][key]!r} in {files[0]}, {config[key]!r} in {ck.path}")
    weights = parse_weights(weights_json, len(files), len(configs[0]["sources"]))
    totals = [sum(row[k] for row in weights) for k in range(len(configs[0]["sources"]))]
    if any(total <= 0 for total in totals):
        raise ConvertError("invalid_option", "--weights: every source needs a positive total")
    digests = [hashlib.sha256(path.read_bytes()).hexdigest()[:16] for path in files]
    onnx_files = [f"{name}.onnx"] if len(files) == 1 else [f"{name}.{i}.onnx" for i in range(len(files))]
    description = f"Demucs v4 (HTDemucs) converted from {source or ', '.join(p.name for p in files)}"

    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    except OSError as exc:
        raise ConvertError("io_error", f"cannot write under {parent}: {exc.strerror or exc}") from None
    try:
        for ck, config, file in zip(checkpoints, configs, onnx_files):
            model = build_core_graph(config, ck.state, ck.path)
            onnx.save(model, str(staging / file))
            del model
            print(f"converted {ck.path} -> {file}")
        (staging / "manifest.toml").write_text(
            manifest_text(name, configs[0], onnx_files, weights, description, digests))
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(staging, out_dir)
    except OSError as exc:
        raise ConvertError("io_error", f"cannot write {out_dir}: {exc.strerror or exc}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {out_dir}/manifest.toml")


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        raise ConvertError("invalid_option", message)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="model directory to create")
    parser.add_argument("--name", required=True, help="model name (manifest, ONNX file names)")
    parser.add_argument("--weights", help="bag weights, JSON: one list per FILE of one number per source")
    parser.add_argument("--segment", help="segment in seconds (e.g. 7.8 or 39/5), at most the model's")
    parser.add_argument("--source", help="where the files came from (recorded in the manifest)")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    try:
        args = parser.parse_args(argv)
        convert(args.files, args.out, args.name, args.weights, args.segment, args.source)
    except ConvertError as exc:
        print(f"[{exc.code}] {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
