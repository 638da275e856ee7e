"""Broken, hostile and unsupported GGUF files fail with typed errors naming the file, the
tensor or key at fault, and what is supported; never a numpy traceback, never a hang."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcore.engine.model.gguf import load_gguf
from agentcore.errors import (
    AgentCoreError,
    ModelFormatError,
    UnsupportedArchitecture,
    UnsupportedQuantization,
)
from agentcore.testing.synthetic import write_synthetic_gguf


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_synthetic_gguf(tmp_path_factory.mktemp("good") / "good.gguf", vocab=300)


def rewrite(
    src: Path,
    dst: Path,
    *,
    kv: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    tensors: dict[str, tuple[np.ndarray, Q]] | None = None,
) -> Path:
    """Copy a GGUF file with metadata overrides (None deletes a key) and tensor edits
    (replacements, or additions at the end)."""
    model = load_gguf(src)
    metadata = {**model.metadata, **(kv or {})}
    writer = GGUFWriter(dst, str(metadata.pop("general.architecture")))
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    edits = {n: (np.array(t.raw), t.qtype) for n, t in model.tensors.items() if n not in drop}
    edits |= tensors or {}
    for name, (raw, qtype) in edits.items():
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor(name, raw)
        else:
            writer.add_tensor(name, raw.view(np.uint8), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def header_size(path: Path) -> int:
    """Bytes before the first tensor's data."""
    model = load_gguf(path)
    data = sum(-(-t.nbytes // 32) * 32 for t in model.tensors.values())
    return path.stat().st_size - data


def patch(path: Path, find: bytes, offset: int, value: bytes) -> None:
    """Overwrite bytes at ``offset`` after the first occurrence of ``find``."""
    data = bytearray(path.read_bytes())
    at = data.index(find) + len(find) + offset
    data[at : at + len(value)] = value
    path.write_bytes(bytes(data))


def test_bad_magic_says_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelFormatError, match=r"model\.gguf: not a GGUF file"):
        load_gguf(path)


def test_empty_file_is_too_small(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="too small"):
        load_gguf(path)


def test_unsupported_version_names_the_supported_ones(tmp_path, good):
    path = tmp_path / "v9.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 9) + good.read_bytes()[8:])
    with pytest.raises(ModelFormatError, match=r"version 9.*\(2, 3\)"):
        load_gguf(path)


@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.5, 0.9, 0.999])
def test_truncated_header_is_a_format_error(tmp_path, good, fraction):
    cut = int(header_size(good) * fraction)
    path = tmp_path / "cut.gguf"
    path.write_bytes(good.read_bytes()[:cut])
    with pytest.raises(ModelFormatError, match="cut.gguf"):
        load_gguf(path)


def test_truncated_tensor_data_names_the_tensor_and_says_download_again(tmp_path, good):
    path = tmp_path / "cut.gguf"
    path.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelFormatError, match=r"'blk\.1\.ffn_down\.weight'.*truncated"):
        load_gguf(path)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_corrupted_header_byte_loads_or_raises_a_typed_error(tmp_path, good, data):
    raw = bytearray(good.read_bytes())
    at = data.draw(st.integers(0, header_size(good) - 1), label="offset")
    raw[at] = data.draw(st.integers(0, 255), label="byte")
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(raw))
    try:
        load_gguf(path)
    except AgentCoreError:
        pass


def test_unsupported_architecture_lists_the_supported_ones(tmp_path, good):
    path = rewrite(good, tmp_path / "m.gguf", kv={"general.architecture": "mamba"})
    with pytest.raises(UnsupportedArchitecture, match=r"'mamba'.*llama, qwen2, qwen3"):
        load_gguf(path)


def test_unsupported_quantization_names_tensor_type_and_supported_types(tmp_path, good):
    iq4 = np.zeros((64, 64 // 32 * 18), dtype=np.uint8)
    path = rewrite(good, tmp_path / "m.gguf", tensors={"blk.0.attn_q.weight": (iq4, Q.IQ4_NL)})
    match = r"'blk\.0\.attn_q\.weight' uses IQ4_NL.*Q4_K"
    with pytest.raises(UnsupportedQuantization, match=match):
        load_gguf(path)


def test_unknown_type_id_is_unsupported_quantization(tmp_path, good):
    path = tmp_path / "m.gguf"
    path.write_bytes(good.read_bytes())
    name = b"output_norm.weight"
    patch(path, name, 4 + 8, struct.pack("<I", 200))  # after n_dims (u32) and ne0 (u64)
    with pytest.raises(UnsupportedQuantization, match="unknown type id 200"):
        load_gguf(path)


def test_shape_mismatch_with_hyperparameters_names_both(tmp_path, good):
    wrong = np.zeros((64, 32), dtype=np.float32)
    path = rewrite(good, tmp_path / "m.gguf", tensors={"blk.1.attn_q.weight": (wrong, Q.F32)})
    match = r"'blk\.1\.attn_q\.weight' has shape \(64, 32\).*require \(64, 64\)"
    with pytest.raises(ModelFormatError, match=match):
        load_gguf(path)


def test_head_count_that_contradicts_the_tensors_is_a_shape_error(tmp_path, good):
    path = rewrite(good, tmp_path / "m.gguf", kv={"llama.attention.head_count_kv": 4})
    with pytest.raises(ModelFormatError, match=r"attn_k\.weight' has shape"):
        load_gguf(path)


def test_missing_required_tensor_is_named(tmp_path, good):
    path = rewrite(good, tmp_path / "m.gguf", drop=("blk.1.ffn_up.weight",))
    with pytest.raises(ModelFormatError, match=r"'blk\.1\.ffn_up\.weight' is missing"):
        load_gguf(path)


def test_missing_required_key_is_named(tmp_path, good):
    path = rewrite(good, tmp_path / "m.gguf", kv={"llama.block_count": None})
    with pytest.raises(ModelFormatError, match=r"'llama\.block_count' is missing"):
        load_gguf(path)


def test_absurd_layer_count_is_rejected_before_anything_is_read(tmp_path, good):
    path = rewrite(good, tmp_path / "m.gguf", kv={"llama.block_count": 5000})
    with pytest.raises(ModelFormatError, match=r"block_count'=5000 is outside"):
        load_gguf(path)


def test_heads_not_divisible_by_kv_heads_is_rejected(tmp_path, good):
    path = rewrite(good, tmp_path / "m.gguf", kv={"llama.attention.head_count_kv": 3})
    with pytest.raises(ModelFormatError, match="not a multiple of 3 KV heads"):
        load_gguf(path)


def test_overflowing_tensor_dims_are_rejected_without_allocating(tmp_path, good):
    path = tmp_path / "m.gguf"
    path.write_bytes(good.read_bytes())
    patch(path, b"output_norm.weight", 4, struct.pack("<Q", 1 << 62))
    with pytest.raises(ModelFormatError, match=r"'output_norm\.weight' has invalid shape"):
        load_gguf(path)


def test_huge_metadata_array_length_is_rejected_at_once(tmp_path, good):
    path = tmp_path / "m.gguf"
    path.write_bytes(good.read_bytes())
    patch(path, b"tokenizer.ggml.tokens", 4 + 4, struct.pack("<Q", 1 << 40))
    with pytest.raises(ModelFormatError, match=r"'tokenizer\.ggml\.tokens' claims 1099511627776"):
        load_gguf(path)


def test_huge_string_length_is_rejected_at_once(tmp_path, good):
    path = tmp_path / "m.gguf"
    path.write_bytes(good.read_bytes())
    patch(path, b"general.name", 4, struct.pack("<Q", 1 << 50))
    with pytest.raises(ModelFormatError, match="runs past the end of the file"):
        load_gguf(path)


def test_unknown_metadata_value_type_is_named(tmp_path, good):
    path = tmp_path / "m.gguf"
    path.write_bytes(good.read_bytes())
    patch(path, b"general.name", 0, struct.pack("<I", 77))
    with pytest.raises(ModelFormatError, match=r"'general\.name' has unknown value type 77"):
        load_gguf(path)


def test_unsupported_rope_scaling_is_named(tmp_path, good):
    path = rewrite(good, tmp_path / "m.gguf", kv={"llama.rope.scaling.type": "longrope"})
    with pytest.raises(ModelFormatError, match="rope scaling 'longrope'.*linear, yarn"):
        load_gguf(path)
    # YaRN needs the context it was trained at, to place its ramp.
    path = rewrite(good, tmp_path / "y.gguf", kv={"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0})
    with pytest.raises(ModelFormatError, match="rope scaling 'yarn'.*original_context_length"):
        load_gguf(path)


def test_linear_rope_scaling_is_reported_in_the_spec(tmp_path, good):
    path = rewrite(
        good,
        tmp_path / "m.gguf",
        kv={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0},
    )
    assert load_gguf(path).spec.rope_scaling == {"type": "linear", "factor": 4.0}


def test_rope_freqs_tensor_is_reported_as_frequency_factors(tmp_path, good):
    factors = np.ones(8, dtype=np.float32)
    path = rewrite(good, tmp_path / "m.gguf", tensors={"rope_freqs.weight": (factors, Q.F32)})
    spec = load_gguf(path).spec
    assert spec.rope_scaling == {"type": "freq_factors", "tensor": "rope_freqs.weight"}
