"""Saved voices: round trip, hostile names, no pickles, foreign-model flag, official spk2info.pt import."""

import json
import warnings

import numpy as np
import pytest
import torch

from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.frontend import PromptFeatures
from cosyvoice_onnx.tokenizer import TextTokenizer, write_tiny_tokenizer
from cosyvoice_onnx.voices import VoiceStore, file_fingerprint, model_fingerprint, validate_name


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return TextTokenizer.from_dir(write_tiny_tokenizer(tmp_path_factory.mktemp("qwen")))


def voice(seed=0, transcript="hello world"):
    rng = np.random.default_rng(seed)
    return PromptFeatures(rng.integers(0, 6561, (1, 50)), rng.standard_normal((1, 100, 80)).astype(np.float32),
                          rng.standard_normal((1, 192)).astype(np.float32), transcript, {"seconds": 2.0})


def test_round_trip(tmp_path):
    store = VoiceStore(tmp_path, model="m1")
    original = voice()
    store.save("Anna 2", original)
    loaded = store.load("Anna 2")
    assert np.array_equal(loaded.speech_tokens, original.speech_tokens) and loaded.speech_tokens.dtype == np.int64
    assert np.array_equal(loaded.mel, original.mel) and np.array_equal(loaded.embedding, original.embedding)
    assert loaded.transcript == "hello world" and loaded.meta["seconds"] == 2.0
    assert [v.name for v in store.list()] == ["Anna 2"] and store.list()[0].compatible is True
    meta = json.loads((tmp_path / "Anna 2.json").read_text(encoding="utf-8"))
    assert meta["model"] == "m1" and meta["transcript"] == "hello world"
    store.delete("Anna 2")
    assert store.list() == [] and not any(tmp_path.iterdir())


def test_unicode_name_and_overwrite_rules(tmp_path):
    store = VoiceStore(tmp_path)
    store.save("小明_v1.2", voice())
    with pytest.raises(InputError, match="exists"):
        store.save("小明_v1.2", voice(1))
    store.save("小明_v1.2", voice(1), overwrite=True)
    assert np.array_equal(store.load("小明_v1.2").mel, voice(1).mel)
    store.save("Bob", voice())
    with pytest.raises(InputError, match="case"):
        store.save("bob", voice())


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", ".hidden", "", "x" * 65, "CON", "con.txt", "Lpt1",
                                  "nul ", "name.", " lead", "tab\tname", "new\nline", "a:b", "a*b", "_x", None])
def test_hostile_names_are_refused(tmp_path, name):
    store = VoiceStore(tmp_path)
    with pytest.raises(InputError):
        validate_name(name)
    with pytest.raises(InputError):
        store.save(name, voice())
    with pytest.raises(InputError):
        store.load(name)
    assert not any(tmp_path.iterdir()) and not (tmp_path.parent / "x.npz").exists()


def test_good_names():
    for name in ["a", "A-1_b.c d", "x" * 64, "Console", "COM10", "配音员一号"]:
        assert validate_name(name) == name


def test_arrays_are_never_unpickled(tmp_path):
    store = VoiceStore(tmp_path)
    store.save("v", voice())
    np.savez(tmp_path / "v.npz", speech_tokens=np.array([object()], dtype=object), mel=np.zeros((1, 2, 80)),
             embedding=np.zeros((1, 192)))
    with pytest.raises(InputError, match="unreadable"):
        store.load("v")


def test_bad_arrays_are_refused(tmp_path):
    bad = PromptFeatures(np.full((1, 5), 7000), np.zeros((1, 10, 80), np.float32), np.zeros((1, 192), np.float32))
    with pytest.raises(InputError, match="outside"):
        VoiceStore(tmp_path).save("v", bad)


def test_voice_from_another_model_is_flagged(tmp_path):
    VoiceStore(tmp_path, model="m1").save("v", voice())
    other = VoiceStore(tmp_path, model="m2")
    assert other.list()[0].compatible is False
    with pytest.warns(UserWarning, match="other speaker"):
        assert other.load("v").meta["foreign_model"] is True
    with pytest.raises(InputError, match="other speaker"):
        other.load("v", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert VoiceStore(tmp_path, model="m1").load("v").meta["foreign_model"] is False


def test_fingerprint_tells_files_apart(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    payload = np.random.default_rng(0).bytes(3 << 20)
    a.write_bytes(payload)
    b.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))     # differs in the last byte only
    assert file_fingerprint(a) != file_fingerprint(b)
    assert model_fingerprint(a, a) == model_fingerprint(a, a) != model_fingerprint(a, b)


def test_import_official_spk2info(tmp_path, tokenizer):
    prompt_ids = tokenizer.encode("You are a helpful assistant.<|endofprompt|>希望你以后能够做的比我还好呦。")
    source = voice(3)
    tokens = torch.from_numpy(source.speech_tokens.astype(np.int32))
    entry = {  # the keys add_zero_shot_spk stores (frontend_zero_shot minus the text to speak)
        "prompt_text": torch.tensor([prompt_ids], dtype=torch.int32),
        "prompt_text_len": torch.tensor([len(prompt_ids)], dtype=torch.int32),
        "llm_prompt_speech_token": tokens, "llm_prompt_speech_token_len": torch.tensor([50], dtype=torch.int32),
        "flow_prompt_speech_token": tokens, "flow_prompt_speech_token_len": torch.tensor([50], dtype=torch.int32),
        "prompt_speech_feat": torch.from_numpy(source.mel), "prompt_speech_feat_len": torch.tensor([100]),
        "llm_embedding": torch.from_numpy(source.embedding), "flow_embedding": torch.from_numpy(source.embedding),
    }
    path = tmp_path / "spk2info.pt"
    torch.save({"my voice": entry, "sft speaker": {"embedding": torch.zeros(1, 192)}, "../evil": entry}, path)
    store = VoiceStore(tmp_path / "voices")
    outcome = store.import_spk2info(path, tokenizer)
    assert outcome["my voice"] == "saved"
    assert outcome["sft speaker"].startswith("skipped") and outcome["../evil"].startswith("skipped")
    loaded = store.load("my voice")
    assert np.array_equal(loaded.speech_tokens, source.speech_tokens)
    assert np.array_equal(loaded.mel, source.mel) and np.array_equal(loaded.embedding, source.embedding)
    # The transcript re-encodes to exactly the stored prompt-text ids, system prompt included.
    assert tokenizer.encode(loaded.transcript) == prompt_ids


def test_import_refuses_a_speaker_table_that_unpacks_beyond_its_bound(tmp_path, tokenizer, monkeypatch):
    import zipfile

    from cosyvoice_onnx import voices

    path = tmp_path / "spk2info.pt"
    torch.save({"a": {"embedding": torch.zeros(1, 192)}}, path)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        with dst.open("archive/data/999", "w", force_zip64=True) as f:
            for _ in range(20):  # 320 MiB of zeros, ~300 KB on disk
                f.write(bytes(1 << 24))
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or {})
    with pytest.raises(InputError, match="unpacks to .* MB, more than"):
        VoiceStore(tmp_path / "voices").import_spk2info(bomb, tokenizer)
    assert not loads and voices.MAX_SPK2INFO_BYTES < 320 << 20
