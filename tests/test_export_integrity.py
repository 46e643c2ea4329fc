"""Export integrity and merging: full SHA-256 of graphs and checkpoints (cached by file identity), exports that
add precisions instead of replacing them, and the exporter's messages."""

import json
import os
import shutil

import pytest

from cosyvoice_onnx import hash_cache
from cosyvoice_onnx.errors import ExportError, ModelFolderError
from cosyvoice_onnx.manifest import check_export
from cosyvoice_onnx.model_files import inspect_model_dir

STAGES = ["lm", "flow", "vocoder"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir):
    """The tiny model with an fp32 + int8 export (no parity run: these tests are about files)."""
    from cosyvoice_onnx.export.exporter import export_model

    model = tmp_path_factory.mktemp("integrity") / "tiny"
    shutil.copytree(tiny_model_dir, model)
    messages = []
    export_model(model, precisions="fp32,int8", parity=False, progress=messages.append)
    return model, messages


@pytest.fixture()
def copy(exported, tmp_path):
    model, _ = exported
    dst = tmp_path / "model"
    shutil.copytree(model, dst)
    return dst


def _manifest(model):
    return json.loads((model / "onnx" / "manifest.json").read_text())


def _flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_graph_garbled_at_the_same_size_is_refused(copy):
    graph = copy / "onnx" / "lm_prefill.onnx"
    size = graph.stat().st_size
    _flip_byte(graph, size // 2)
    assert graph.stat().st_size == size
    files = inspect_model_dir(copy)
    with pytest.raises(ExportError, match=r"lm_prefill\.onnx: differs from the file the export wrote .*re-export"):
        check_export(copy / "onnx", files, "fp32", STAGES)
    check_export(copy / "onnx", files, "fp32", ["flow", "vocoder"])  # the untouched stages still pass


def test_one_byte_changed_anywhere_in_a_checkpoint_makes_the_export_stale(copy):
    llm = copy / "llm.pt"
    size = llm.stat().st_size
    assert size > 24 << 20  # so that offset size // 4 is outside the first, middle and last 4 MB
    _flip_byte(llm, size // 4)
    with pytest.raises(ExportError, match=r"stale export: llm\.pt differs"):
        check_export(copy / "onnx", inspect_model_dir(copy), "fp32", STAGES)


def test_hashes_are_cached_by_file_identity(copy, monkeypatch):
    calls = []
    real = hash_cache.file_sha256
    monkeypatch.setattr(hash_cache, "file_sha256", lambda path, *a: calls.append(path.name) or real(path, *a))
    files = inspect_model_dir(copy)
    check_export(copy / "onnx", files, "int8", STAGES)  # a copied folder: new inodes, so everything is hashed
    assert {"llm.pt", "flow.pt", "hift.pt", "lm_prefill.int8.onnx", "flow_noise.npy"} <= set(calls)
    calls.clear()
    check_export(copy / "onnx", files, "int8", STAGES)
    assert calls == []
    # A file rewritten in place and touched back to its old mtime is still hashed again (its ctime moved).
    llm = copy / "llm.pt"
    st = llm.stat()
    _flip_byte(llm, st.st_size // 4)
    os.utime(llm, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ExportError, match="stale export: llm.pt"):
        check_export(copy / "onnx", files, "int8", STAGES)
    assert calls == ["llm.pt"]


@pytest.mark.parametrize("garbage", ["not json", "[1, 2]", '{"format": 1, "files": {"x": 3}}'])
def test_a_corrupt_or_foreign_cache_is_ignored(copy, garbage):
    (copy / "onnx" / hash_cache.CACHE_NAME).write_text(garbage)
    check_export(copy / "onnx", inspect_model_dir(copy), "fp32", STAGES)
    cache = json.loads((copy / "onnx" / hash_cache.CACHE_NAME).read_text())
    assert cache["format"] == hash_cache.CACHE_FORMAT and str((copy / "llm.pt").resolve()) in cache["files"]


def test_exporting_fp32_again_keeps_the_int8_export(copy):
    from cosyvoice_onnx.export.exporter import export_model

    before = _manifest(copy)
    messages = []
    export_model(copy, precisions="fp32", parity=False, progress=messages.append)
    after = _manifest(copy)
    assert set(after["precisions"]) == {"fp32", "int8"}
    assert after["precisions"]["int8"] == before["precisions"]["int8"]
    assert any("kept the earlier int8 export" in m for m in messages)
    check_export(copy / "onnx", inspect_model_dir(copy), "int8", STAGES)


def test_changed_fp32_graphs_drop_the_precisions_derived_from_them(copy):
    from cosyvoice_onnx.export.exporter import export_model

    manifest = _manifest(copy)
    manifest["files"]["flow_estimator.onnx"]["sha256"] = "0" * 64  # as if the earlier fp32 graph had differed
    (copy / "onnx" / "manifest.json").write_text(json.dumps(manifest))
    messages = []
    export_model(copy, precisions="fp32", parity=False, progress=messages.append)
    assert set(_manifest(copy)["precisions"]) == {"fp32"}
    assert any("dropped the earlier int8 export" in m and "--precision int8" in m for m in messages)


def test_missing_precision_names_the_command_and_the_studio(copy):
    manifest = _manifest(copy)
    del manifest["precisions"]["int8"]
    (copy / "onnx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError) as err:
        check_export(copy / "onnx", inspect_model_dir(copy), "int8", STAGES)
    assert f"cosyvoice-onnx export --model {copy} --precision int8" in str(err.value)
    assert "Models tab" in str(err.value)


def test_the_vocoder_is_not_said_to_be_exported_in_int8(exported):
    _, messages = exported
    assert "[vocoder] exporting fp32" in messages and "[lm] exporting int8" in messages
    assert not any(m.startswith("[vocoder] exporting int8") for m in messages)
    assert "[vocoder] int8: uses the fp32 graphs" in messages


def test_parity_that_cannot_tokenize_is_refused_before_writing(tiny_model_dir, tmp_path):
    from cosyvoice_onnx.export.exporter import export_model

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = model / "CosyVoice-BlankEN" / "config.json"
    config.write_text(config.read_text().replace('"vocab_size": 151936', '"vocab_size": 1000'))
    with pytest.raises(ModelFolderError, match=r"vocab_size 1000 is smaller than the tokenizer's \d+ ids.*--no-parity"):
        export_model(model, precisions="fp32", parity=True, progress=lambda m: None)
    assert not (model / "onnx").exists()


def test_info_lists_each_precision_and_whether_it_is_current(copy, capsys):
    from cosyvoice_onnx.cli import main

    graph = copy / "onnx" / "flow_estimator.int8.onnx"
    _flip_byte(graph, graph.stat().st_size // 2)
    assert main(["info", "--model", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"ONNX export: {copy / 'onnx'}" in out
    assert "  fp32  lm, flow, vocoder: current" in out
    assert "  int8  lm, flow, vocoder (7-bit weights): not usable: " in out and "flow_estimator.int8.onnx: differs" in out
    _flip_byte(copy / "flow.pt", 100)
    assert main(["info", "--model", str(copy)]) == 0
    assert "  fp32  lm, flow, vocoder: stale: " in capsys.readouterr().out


def test_info_without_an_export_says_so(copy, capsys):
    from cosyvoice_onnx.cli import main

    shutil.rmtree(copy / "onnx")
    assert main(["info", "--model", str(copy)]) == 0
    assert "ONNX export: none (no ONNX export in" in capsys.readouterr().out
