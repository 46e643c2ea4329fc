"""Model folder checks: layout, safe yaml reading and every loading error naming the file and problem."""

import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from cosyvoice_onnx.config_readers import load_config
from cosyvoice_onnx.errors import ModelFolderError
from cosyvoice_onnx.hyperparams import read_hyperparams
from cosyvoice_onnx.model_files import inspect_model_dir, normalize_hift_keys
from cosyvoice_onnx.torch_backend.loader import load_module

OFFICIAL_FILES = {"cosyvoice3.yaml", "llm.pt", "llm.rl.pt", "flow.pt", "hift.pt", "campplus.onnx",
                  "speech_tokenizer_v3.onnx", "spk2info.pt", "CosyVoice-BlankEN"}


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_tiny_folder_has_the_official_layout(tiny_model_dir):
    assert OFFICIAL_FILES <= {p.name for p in tiny_model_dir.iterdir()}
    qwen = {p.name for p in (tiny_model_dir / "CosyVoice-BlankEN").iterdir()}
    assert {"config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "model.safetensors"} <= qwen
    files = inspect_model_dir(tiny_model_dir)
    assert files.config.version == 3 and files.spk2info is not None


def test_checkpoints_have_official_key_names(tiny_model_dir):
    llm = torch.load(tiny_model_dir / "llm.pt", weights_only=True)
    flow = torch.load(tiny_model_dir / "flow.pt", weights_only=True)
    hift = torch.load(tiny_model_dir / "hift.pt", weights_only=True)
    assert "llm.model.model.embed_tokens.weight" in llm and "llm.model.lm_head.weight" in llm
    assert llm["speech_embedding.weight"].shape[0] == 6761 and "llm_decoder.bias" not in llm
    assert "decoder.estimator.rotary_embed.inv_freq" in flow and flow["input_embedding.weight"].shape == (6561, 80)
    assert "conv_pre.parametrizations.weight.original0" in hift and "m_source.l_linear.weight" in hift


def test_yaml_tags_are_read_as_data_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "cosyvoice3.yaml").write_text(
        f"evil: !apply:os.system ['touch {marker}']\n"
        "chunk_size: 25\nratio: 2\nflow: !new:x.Y\n    static: !ref <chunk_size> * <ratio>\n")
    hp = read_hyperparams(tmp_path / "cosyvoice3.yaml")
    assert not marker.exists()
    assert hp["flow"]["static"] == 50 and hp["evil"].target == "os.system"


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="not a CosyVoice model folder"):
        load_config(tmp_path)
    with pytest.raises(ModelFolderError, match="not found"):
        load_config(tmp_path / "nope")


@pytest.mark.parametrize("name", ["flow.pt", "hift.pt", "llm.pt", "campplus.onnx", "speech_tokenizer_v3.onnx"])
def test_missing_file_is_named(model_copy, name):
    (model_copy / name).unlink()
    with pytest.raises(ModelFolderError, match=name.replace(".", r"\.") + ": missing"):
        inspect_model_dir(model_copy)


def test_missing_rl_checkpoint_only_matters_when_selected(model_copy):
    (model_copy / "llm.rl.pt").unlink()
    inspect_model_dir(model_copy)
    with pytest.raises(ModelFolderError, match="llm.rl.pt: missing"):
        inspect_model_dir(model_copy, llm_variant="rl")


def test_truncated_checkpoint_is_reported(model_copy):
    data = (model_copy / "flow.pt").read_bytes()
    (model_copy / "flow.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFolderError, match=r"flow\.pt: cannot load checkpoint .*truncated"):
        load_module(inspect_model_dir(model_copy), "flow")


def test_empty_file_is_reported(model_copy):
    (model_copy / "hift.pt").write_bytes(b"")
    with pytest.raises(ModelFolderError, match=r"hift\.pt: empty file"):
        inspect_model_dir(model_copy)


def test_key_and_shape_mismatches_are_listed(model_copy):
    state = torch.load(model_copy / "flow.pt", weights_only=True)
    state.pop("spk_embed_affine_layer.bias")
    state["input_embedding.weight"] = torch.zeros(10, 80)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, model_copy / "flow.pt")
    with pytest.raises(ModelFolderError) as err:
        load_module(inspect_model_dir(model_copy), "flow")
    msg = str(err.value)
    assert "flow.pt" in msg and "spk_embed_affine_layer.bias" in msg and "extra.weight" in msg
    assert "input_embedding.weight (10, 80) != expected (6561, 80)" in msg


def test_checkpoint_from_another_model_size_is_refused(model_copy):
    cfg_path = model_copy / "CosyVoice-BlankEN" / "config.json"
    cfg_path.write_text(cfg_path.read_text().replace('"hidden_size": 64', '"hidden_size": 96'))
    with pytest.raises(ModelFolderError, match=r"llm\.pt: does not match"):
        load_module(inspect_model_dir(model_copy), "lm")


class Evil:
    """A non-tensor object: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_not_loaded(model_copy):
    torch.save({"x": Evil()}, model_copy / "flow.pt")
    with pytest.raises(ModelFolderError, match="flow.pt.*non-tensor objects"):
        load_module(inspect_model_dir(model_copy), "flow")


def test_hift_with_gan_prefix_and_legacy_weight_norm_keys_loads(model_copy):
    state = torch.load(model_copy / "hift.pt", weights_only=True)
    legacy = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        legacy["generator." + key] = value
    assert normalize_hift_keys(legacy).keys() == state.keys()
    torch.save(legacy, model_copy / "hift.pt")
    module = load_module(inspect_model_dir(model_copy), "vocoder")
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_checkpoint_that_unpacks_beyond_the_model_size_is_refused_unread(model_copy, monkeypatch):
    import zipfile

    from cosyvoice_onnx import model_files

    bomb = model_copy / "bomb.pt"
    with zipfile.ZipFile(model_copy / "flow.pt") as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        with dst.open("archive/data/999", "w", force_zip64=True) as f:
            block = bytes(1 << 24)
            for _ in range(64):  # 1 GiB of zeros, ~5 MB on disk
                f.write(block)
    assert bomb.stat().st_size < 16 << 20
    bomb.replace(model_copy / "flow.pt")
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or {})
    with pytest.raises(ModelFolderError, match=r"flow\.pt: the checkpoint unpacks to 10\d\d MB, more than the \d+ MB "
                                               r"limit for the model the yaml/config describes"):
        load_module(inspect_model_dir(model_copy), "flow")
    assert not loads, "the size check must come before torch.load"
    assert model_files.expanded_size(model_copy / "hift.pt") <= model_files.checkpoint_limit(0)


# A failed load through the stage loader alone, and through a whole engine that loaded other stages first.
FAILED_LOADS = {
    "stage": "from cosyvoice_onnx.torch_backend.loader import load_module\n"
             "files = inspect_model_dir(MODEL)\n"
             "load = lambda: load_module(files, 'flow')\n",
    "engine": "from cosyvoice_onnx import CosyVoice\n"
              "load = lambda: CosyVoice(MODEL, backend='torch', device='cpu')\n",
}


@pytest.mark.parametrize("entry", sorted(FAILED_LOADS))
def test_failed_loads_release_their_memory(model_copy, entry):
    """A checkpoint inside the size bound that fails later (wrong keys) must not stay in memory through the error,
    even when the caller keeps the errors (as a server showing its last errors does)."""
    state = torch.load(model_copy / "flow.pt", weights_only=True)
    state["unexpected.weight"] = torch.ones(15 << 20)  # 60 MB, inside the 2x + 64 MB bound of the tiny flow
    torch.save(state, model_copy / "flow.pt")
    del state
    script = textwrap.dedent(f"""
        import os
        from cosyvoice_onnx.errors import ModelFolderError
        from cosyvoice_onnx.model_files import inspect_model_dir

        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        MODEL = {str(model_copy)!r}
    """) + FAILED_LOADS[entry] + textwrap.dedent("""
        kept = []
        def attempt():
            try:
                load()
            except ModelFolderError as exc:
                kept.append(exc)
        attempt()  # imports and first-use allocations happen here
        before = rss()
        for _ in range(3):
            attempt()
        print("MB", (rss() - before) / 1e6, "|", kept[-1])
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    grown, message = res.stdout.split("MB", 1)[1].split("|")
    assert "unexpected.weight" in message
    assert float(grown) < 60, f"three failed loads of a 63 MB checkpoint left {float(grown):.0f} MB behind"
