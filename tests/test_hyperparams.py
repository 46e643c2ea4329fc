"""The yaml reader's bounds: hostile documents are refused quickly with a message naming the yaml and the limit,
while the official-shaped yaml of each release reads as before."""

import subprocess
import sys
import textwrap

import pytest

from cosyvoice_onnx.hyperparams import MAX_NODES, _expanded_size, _SafeHyperLoader, read_hyperparams
from cosyvoice_onnx.releases import RELEASES


def _laughs(levels: int = 8, fanout: int = 9) -> str:
    lines = ['l0: &l0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fanout) + "]")
    return "\n".join(lines) + "\n"


def _merge_bomb(levels: int = 8, fanout: int = 9) -> str:
    lines = ["m0: &m0 {a: 1, b: 2}"]
    for i in range(1, levels + 1):
        merges = ", ".join([f"*m{i - 1}"] * fanout)
        lines.append(f"m{i}: &m{i}\n  <<: [{merges}]\n  k{i}: {i}")
    return "\n".join(lines) + "\n"


def _ref_fanout(levels: int = 15, fanout: int = 10) -> str:
    lines = ["a0: 1"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: !ref " + " + ".join([f"<a{i - 1}>"] * fanout))
    return "\n".join(lines) + "\n"


HOSTILE = {
    # name: (yaml text, what the message must say)
    "alias billion laughs": (_laughs(), "more than"),
    "merge-key bomb": (_merge_bomb(), "more than"),
    "string repeated by !ref": ("a: lol\nb: !ref <a> * 100000000\n", "numbers only"),
    "list repeated by !ref": ("a: [1, 2]\nb: !ref <a> * 100000000\n", "numbers only"),
    "literal string repeated": ("b: !ref \"'lol' * 100000000\"\n", "numbers only"),
    "!ref fan-out chain": (_ref_fanout(), "more than"),
    "!ref repeats a large list": (
        "big: [" + ", ".join(["1"] * 2000) + "]\nc: [" + ", ".join(["!ref <big>"] * 100) + "]\n", "more than"),
    "huge product": ("a: 1000000000\nb: !ref <a> * <a> * <a> * <a>\n", "out of range"),
    "!ref cycle": ("a: !ref <b>\nb: !ref <a>\n", "nesting deeper"),
    "long !ref": ("b: !ref " + " + ".join(["1"] * 400) + "\n", "longer than"),
    "deep nesting": ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", "yaml"),
    "over-long integer": ("a: " + "7" * 50_000 + "\n", "yaml"),
    "oversized file": ("a: 1\n" + "#" * (2 << 20) + "\n", "larger than"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_yaml_is_refused_quickly_and_in_bounded_memory(tmp_path, name):
    text, expected = HOSTILE[name]
    path = tmp_path / "cosyvoice3.yaml"
    path.write_text(text)
    # A child process under a 1.5 GB address-space cap: an unbounded reader dies of MemoryError (or never returns
    # within the timeout) instead of taking the test machine's memory with it.
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
        from cosyvoice_onnx.errors import ModelFolderError
        from cosyvoice_onnx.hyperparams import read_hyperparams
        try:
            read_hyperparams({str(path)!r})
        except ModelFolderError as exc:
            print("REFUSED", exc)
        else:
            print("ACCEPTED")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-1500:]
    out = res.stdout.strip()
    assert out.startswith("REFUSED"), out
    assert str(path) in out and expected in out, out


@pytest.mark.parametrize("version", sorted(RELEASES))
def test_official_shaped_yaml_reads_as_before(tmp_path, version):
    from cosyvoice_onnx.tools.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / f"tiny-v{version}", version=version, seed=0)
    path = model / RELEASES[version].yaml_name
    hp = read_hyperparams(path)
    assert hp["hift"]["sampling_rate"] == hp["sample_rate"] == 24000
    assert hp["flow"]["decoder"]["estimator"]["static_chunk_size"] == hp["chunk_size"] * hp["token_mel_ratio"]
    assert hp["llm"].target.endswith(RELEASES[version].classes[0])
    # Far inside the node limit, so a real yaml never comes near it.
    import yaml

    assert _expanded_size(yaml.compose(path.read_text(), Loader=_SafeHyperLoader)) < MAX_NODES // 20


def test_ref_arithmetic_on_numbers_still_works(tmp_path):
    path = tmp_path / "cosyvoice3.yaml"
    path.write_text("a: 25\nb: 2\nc: 0.5\nd: !ref <a> * <b> - 1\ne: !ref <a> // <b> + <c>\nf: !ref -<a> % 7\n"
                    "g: !ref <a>\nh: some/path\ni: !ref <h>\n")
    hp = read_hyperparams(path)
    assert (hp["d"], hp["e"], hp["f"], hp["g"], hp["i"]) == (49, 12.5, 3, 25, "some/path")


@pytest.mark.parametrize("line", ["sample_rate: fast", "chunk_size: [1, 2]"])
def test_a_yaml_value_of_the_wrong_type_is_a_model_folder_error(tiny_model_dir, tmp_path, line):
    import re
    import shutil

    from cosyvoice_onnx.config_readers import load_config
    from cosyvoice_onnx.errors import ModelFolderError

    model = tmp_path / "model"
    model.mkdir()
    shutil.copytree(tiny_model_dir / "CosyVoice-BlankEN", model / "CosyVoice-BlankEN")
    text = (tiny_model_dir / "cosyvoice3.yaml").read_text()
    key = line.split(":")[0]
    (model / "cosyvoice3.yaml").write_text(re.sub(rf"(?m)^{key}: .*$", line, text))
    with pytest.raises(ModelFolderError, match=r"cosyvoice3\.yaml: "):
        load_config(model)
