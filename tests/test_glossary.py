"""Pronunciation glossary: matching rules, files, validation, and what the engine does with it."""

from pathlib import Path

import numpy as np
import pytest

from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.glossary import Glossary, GlossaryEntry, glossary_path
from cosyvoice_onnx.releases import RELEASES
from cosyvoice_onnx.tokenizer import ARPABET_TOKENS, PINYIN_TOKENS

TRANSCRIPT = "This is a synthetic prompt clip."


def entry(term, reading, kind="respell", **flags):
    return GlossaryEntry(term, reading, kind, **flags)


@pytest.fixture
def glossary():
    return Glossary((entry("重庆", "chóng qìng", "pinyin"), entry("New York", "new york town"),
                     entry("New York City", "the big apple"), entry("hello", "HH AH0 L OW1", "arpabet"),
                     entry("SQL", "sequel", case_sensitive=True), entry("Qt", "cute", whole_word=True),
                     entry("几", "jǐ", "pinyin")))


def test_longest_term_wins_and_readings_become_tokens(glossary):
    assert glossary.apply("New York City beats New York.") == "the big apple beats new york town."
    assert glossary.apply("我在重庆。") == "我在[ch][óng][q][ìng]。"
    assert glossary.apply("hello") == "[HH][AH0][L][OW1]"


def test_mixed_scripts_in_one_text(glossary):
    assert glossary.apply("hello重庆SQL几个") == "[HH][AH0][L][OW1][ch][óng][q][ìng]sequel[j][ǐ]个"


def test_tags_and_written_tokens_are_left_alone(glossary):
    text = "[laughter]hello <strong>hello</strong> [j][ǐ]几 <|endofprompt|>hello [HH][AH0]"
    assert glossary.apply(text) == ("[laughter][HH][AH0][L][OW1] <strong>[HH][AH0][L][OW1]</strong> [j][ǐ][j][ǐ] "
                                    "<|endofprompt|>[HH][AH0][L][OW1] [HH][AH0]")
    # A term that is also a tag's name is not matched inside the tag.
    inside = Glossary((entry("strong", "mighty"), entry("laughter", "haha")))
    assert inside.apply("<strong>strong</strong>[laughter] laughter") == "<strong>mighty</strong>[laughter] haha"


def test_case_and_whole_word_options(glossary):
    assert glossary.apply("SQL sql Sql") == "sequel sql Sql"          # case-sensitive
    assert glossary.apply("HELLO Hello") == "[HH][AH0][L][OW1] [HH][AH0][L][OW1]"   # case-insensitive (default)
    assert glossary.apply("Qt, qt; Qtile and myQt") == "cute, cute; Qtile and myQt"  # whole word
    assert Glossary((entry("Qt", "cute"),)).apply("Qtile") == "cuteile"


def test_a_replacement_is_not_matched_again():
    g = Glossary((entry("A", "AB"), entry("B", "C")))
    assert g.apply("A B") == "AB C"


def test_ambiguous_terms_are_refused_nested_terms_are_fine():
    with pytest.raises(InputError, match="would match the same text"):
        Glossary((entry("SQL", "sequel"), entry("sql", "S Q L")))
    with pytest.raises(InputError, match="would match the same text"):
        Glossary((entry("SQL", "sequel", case_sensitive=True), entry("sql", "S Q L")))
    both = Glossary((entry("SQL", "sequel", case_sensitive=True), entry("sql", "ess queue ell", case_sensitive=True)))
    assert both.apply("SQL sql") == "sequel ess queue ell"
    assert len(Glossary((entry("York", "yorke"), entry("New York", "nyork")))) == 2


@pytest.mark.parametrize("args, message", [
    (("", "x"), "empty"), (("  ", "x"), "empty"), (("term", ""), "no reading"),
    (("几", "jx9", "pinyin"), "not a pinyin syllable"), (("重庆", "chóng", "pinyin"), "one syllable per character"),
    (("abc", "a", "pinyin"), "Han characters only"), (("hello", "HH XX9", "arpabet"), "XX9"),
    (("a[b]", "x"), "tags"), (("x", "y", "ipa"), "unknown kind"),
])
def test_bad_entries_get_a_clear_message(args, message):
    with pytest.raises(InputError, match=message):
        entry(*args)


def test_csv_and_json_round_trip(glossary, tmp_path):
    assert Glossary.from_csv(glossary.to_csv()) == glossary
    path = glossary.save(glossary_path(tmp_path))
    assert Glossary.load(path) == glossary
    assert Glossary.load(tmp_path / "missing.json") == Glossary()


@pytest.mark.parametrize("csv_text, message", [
    ("word,reading\nSQL,sequel\n", "columns must be"),
    ("term,reading,kind,extra\nSQL,sequel,respell,1\n", "columns must be"),
    ("term,reading,kind\nSQL,sequel,respell\n重庆,chong2,pinyin\n", "line 3"),
    ("term,reading,case_sensitive\nSQL,sequel,maybe\n", "case_sensitive must be true or false"),
    ("term,reading\nSQL,sequel\nsql,S Q L\n", "would match the same text"),
])
def test_a_bad_csv_leaves_the_stored_glossary_unchanged(glossary, tmp_path, csv_text, message):
    path = glossary.save(tmp_path / "glossary.json")
    before = path.read_bytes()
    with pytest.raises(InputError, match=message):
        Glossary.load(path).merged(Glossary.from_csv(csv_text)).save(path)
    assert path.read_bytes() == before


def test_a_corrupt_json_file_is_reported(tmp_path):
    path = tmp_path / "glossary.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        Glossary.load(path)


def test_editing_replaces_or_refuses_the_same_term(glossary):
    edited = glossary.with_entry(entry("sql", "ess queue ell"))
    assert edited.apply("sql SQL") == "ess queue ell ess queue ell"
    with pytest.raises(InputError, match="already has"):
        glossary.with_entry(entry("hello", "hi"), replace_existing=False)
    assert "hello" not in [e.term for e in glossary.without("HELLO").entries]
    with pytest.raises(InputError, match="no term"):
        glossary.without("absent")


def test_synthesis_with_a_glossary_equals_the_substituted_text(tiny_engine, prompt_wav):
    voice = tiny_engine.prompt_from_audio(prompt_wav, TRANSCRIPT)
    g = Glossary((entry("hello", "HH AH0 L OW1", "arpabet"), entry("SQL", "sequel")))
    text = "Hello there, SQL fans."
    with_glossary = tiny_engine.synthesize(text, voice=voice, seed=5, max_len=30, glossary=g, return_info=True)
    manual = tiny_engine.synthesize("[HH][AH0][L][OW1] there, sequel fans.", voice=voice, seed=5, max_len=30,
                                    return_info=True)
    plain = tiny_engine.synthesize(text, voice=voice, seed=5, max_len=30, return_info=True)
    assert with_glossary[1].segments == manual[1].segments != plain[1].segments
    assert with_glossary[1].tokens == manual[1].tokens
    np.testing.assert_array_equal(with_glossary[0], manual[0])


@pytest.mark.parametrize("version", sorted(RELEASES))
def test_phone_entries_need_the_releases_tokens(tiny_model_of, version, prompt_wav):
    from cosyvoice_onnx import CosyVoice

    engine = CosyVoice(tiny_model_of(version))
    known = set(engine.tokenizer.added_tokens)
    respell = Glossary((entry("SQL", "sequel"),))
    assert engine.frontend.text_segments("SQL is fine.", glossary=respell) == ["sequel is fine."]
    for kind, reading, tokens in (("pinyin", "jǐ", PINYIN_TOKENS), ("arpabet", "HH AH0", ARPABET_TOKENS)):
        g = Glossary((entry("几" if kind == "pinyin" else "huh", reading, kind),))
        if set(tokens) <= known:
            assert engine.frontend.text_segments("几个 huh.", glossary=g)
        else:
            with pytest.raises(InputError, match=f"has a {kind} reading, but this model has no {kind} tokens"):
                engine.synthesize("几个 huh.", prompt_wav=prompt_wav, glossary=g)


def test_cli_glossary_commands_and_a_bad_import(tmp_path, capsys):
    from cosyvoice_onnx import cli

    store = tmp_path / "voices"
    assert cli.main(["glossary", "add", "重庆", "--reading", "chong2 qing4", "--kind", "pinyin",
                     "--voices-dir", str(store)]) == 0
    assert cli.main(["glossary", "add", "SQL", "--reading", "sequel", "--case-sensitive",
                     "--voices-dir", str(store)]) == 0
    before = glossary_path(store).read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("term,reading,kind\nNew,noo,respell\nhi,XX9,arpabet\n", encoding="utf-8")
    assert cli.main(["glossary", "import", "--csv", str(bad), "--voices-dir", str(store)]) == 2
    assert "line 3" in capsys.readouterr().err
    assert glossary_path(store).read_bytes() == before
    exported = tmp_path / "g.csv"
    assert cli.main(["glossary", "export", "--csv", str(exported), "--voices-dir", str(store)]) == 0
    assert cli.main(["glossary", "remove", "SQL", "--voices-dir", str(store)]) == 0
    assert cli.main(["glossary", "import", "--csv", str(exported), "--voices-dir", str(store)]) == 0
    capsys.readouterr()
    assert cli.main(["glossary", "apply", "重庆SQL", "--voices-dir", str(store)]) == 0
    assert capsys.readouterr().out.strip() == "[ch][óng][q][ìng]sequel"


def test_cli_synth_uses_the_voices_folders_glossary_by_default(tiny_model_of, prompt_wav, tmp_path, capsys):
    from cosyvoice_onnx import cli

    store = tmp_path / "voices"
    Glossary((entry("几", "jǐ", "pinyin"),)).save(glossary_path(store))
    version = next(v for v, r in RELEASES.items() if not set(PINYIN_TOKENS) <= set(release_tokens(r)))
    base = ["synth", "--model", str(tiny_model_of(version)), "--prompt-wav", str(prompt_wav), "--text", "几个。",
            "--out", str(tmp_path / "a.wav")]
    assert cli.main(base + ["--voices-dir", str(store)]) == 2
    err = capsys.readouterr().err
    assert "has a pinyin reading, but this model has no pinyin tokens" in err and "--no-glossary" in err
    assert cli.main(base + ["--glossary", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def release_tokens(release):
    from cosyvoice_onnx.tokenizer import ADDED_TOKENS_BY_VERSION

    return ADDED_TOKENS_BY_VERSION[release.tokenizer_version]


@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")
def test_studio_glossary_endpoints(tiny_model_dir, tiny_engine, prompt_wav, tmp_path, free_port):
    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from test_studio_api import launch, read

    from cosyvoice_onnx.audio import to_int16

    demo, url, studio = launch(tiny_model_dir, tmp_path / "data", free_port())
    try:
        client = Client(url, verbose=False)
        named = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
        assert {"/glossary", "/glossary_add", "/glossary_delete", "/glossary_preview", "/glossary_import",
                "/glossary_export"} <= named
        client.predict("几", "ji3", "pinyin", False, False, api_name="/glossary_add")
        table = client.predict("SQL", "sequel", "respell", True, False, api_name="/glossary_add")
        assert [row[0] for row in table["data"]] == ["几", "SQL"] and table["data"][0][5] == "[j][ǐ]"
        assert client.predict("几个SQL。", "", api_name="/glossary_preview") == "[j][ǐ]个sequel。"
        with pytest.raises(AppError, match="would match the same text"):
            client.predict(handle_file(str(_csv(tmp_path / "twice.csv", "term,reading\nsql,x\nSQL,y\n"))), False,
                           api_name="/glossary_import")
        with pytest.raises(AppError, match="not a pinyin syllable"):
            client.predict("行", "xx9", "pinyin", False, False, api_name="/glossary_add")
        with pytest.raises(AppError, match="columns must be"):
            client.predict(handle_file(str(_csv(tmp_path / "columns.csv", "word,reading\na,b\n"))), False,
                           api_name="/glossary_import")
        assert [row[0] for row in client.predict(api_name="/glossary")["data"]] == ["几", "SQL"]
        exported = Path(client.predict(api_name="/glossary_export")).read_text(encoding="utf-8")
        assert Glossary.from_csv(exported) == Glossary.load(glossary_path(tmp_path / "data"))
        assert [row[0] for row in client.predict("几", api_name="/glossary_delete")["data"]] == ["SQL"]
        # Synthesis in the studio speaks the substituted text.
        _, clip, _ = client.predict(api_name="/zero_shot", text="SQL there.", prompt_audio=handle_file(str(prompt_wav)),
                                    transcript=TRANSCRIPT, seed=3)
        expected = to_int16(tiny_engine.synthesize("sequel there.", prompt_wav=prompt_wav, prompt_text=TRANSCRIPT,
                                                   seed=3))
        _, audio = read(clip)
        assert audio.shape == expected.shape
        assert np.max(np.abs(audio.astype(np.int32) - expected)) <= 1
    finally:
        demo.close()


def _csv(path, text):
    path.write_text(text, encoding="utf-8")
    return path
