"""ember/loader/gguf_reader.py against the `gguf` package's GGUFReader (the oracle): every
metadata value and every tensor's type, shape and bytes, on the default model's file and on a
file holding every value type and every tensor type the loader promises."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as QT

from ember.loader import default_model_path
from ember.loader.gguf_reader import read_gguf
from tests.loader.builders import encode, write_gguf


def assert_same_as_gguf(path: str) -> None:
    meta, tensors = read_gguf(path)
    oracle = gguf.GGUFReader(path)
    assert set(meta) == set(oracle.fields)
    for key, field in oracle.fields.items():
        expected = field.contents()
        if isinstance(expected, float):
            assert meta[key] == pytest.approx(expected, rel=1e-7), key
        else:
            assert meta[key] == expected, key
    assert list(tensors) == [t.name for t in oracle.tensors]
    for t in oracle.tensors:
        ours = tensors[t.name]
        assert ours.tensor_type == t.tensor_type, t.name
        assert ours.shape == tuple(int(n) for n in t.shape), t.name
        assert ours.data.shape == t.data.shape and ours.data.dtype == t.data.dtype, t.name
        assert np.array_equal(ours.data.view(np.uint8), np.asarray(t.data).view(np.uint8)), t.name


def test_default_model_file_reads_as_the_gguf_package_reads_it():
    assert_same_as_gguf(default_model_path())


def test_every_value_and_tensor_type(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {}
    for qtype in (QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1):
        tensors[f"t.{qtype.name}"] = (encode(rng.standard_normal((3, 64)).astype(np.float32), qtype), qtype)
    tensors["t.vector"] = (rng.standard_normal(7).astype(np.float32), QT.F32)
    path = write_gguf(tmp_path / "types.gguf", tensors, arch="test", metadata={
        "k.bool": True, "k.uint": 7, "k.float": 0.25, "k.str": "héllo", "k.strs": ["a", "", "ü x"],
        "k.ints": [1, -2, 3], "k.floats": [0.5, -1.5], "k.empty": []})
    writer_types = gguf.GGUFWriter(str(tmp_path / "more.gguf"), "test")
    for add, key, value in [(writer_types.add_uint8, "u8", 255), (writer_types.add_int8, "i8", -3),
                            (writer_types.add_uint16, "u16", 65535), (writer_types.add_int16, "i16", -300),
                            (writer_types.add_int32, "i32", -70000), (writer_types.add_uint64, "u64", 2**40),
                            (writer_types.add_int64, "i64", -(2**40)), (writer_types.add_float64, "f64", 1e-300)]:
        add(key, value)
    writer_types.write_header_to_file()
    writer_types.write_kv_data_to_file()
    writer_types.write_tensors_to_file()
    writer_types.close()
    assert_same_as_gguf(path)
    assert_same_as_gguf(str(tmp_path / "more.gguf"))
    meta, _ = read_gguf(str(tmp_path / "more.gguf"))
    assert (meta["u64"], meta["i64"], meta["i8"]) == (2**40, -(2**40), -3)


@pytest.mark.parametrize("damage", ["magic", "truncated", "version"])
def test_a_damaged_file_is_a_value_error(tmp_path, damage):
    good = open(default_model_path(), "rb").read(1 << 20)
    bad = {"magic": b"GGUX" + good[4:], "truncated": good[:200], "version": good[:4] + b"\x09\x00\x00\x00" + good[8:]}
    path = tmp_path / "bad.gguf"
    path.write_bytes(bad[damage])
    with pytest.raises(ValueError):
        read_gguf(str(path))
