"""Joins between segments: exact lengths, no gaps or clicks at cross-fades, streamed joins equal whole joins."""

import numpy as np
import pytest

from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.longtext import Joiner, raised_cosine_fade

RATE = 24000


def tone(seconds, freq, amplitude, phase=0.0):
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def pieces():
    return [tone(0.3, 220, 0.5), tone(0.2, 330, 0.8, phase=1.0) + 0.3, tone(0.25, 180, 0.4)]


def test_none_is_plain_concatenation():
    parts = pieces()
    assert np.array_equal(Joiner.create("none", 40, RATE).join(parts), np.concatenate(parts))


def test_silence_inserts_exact_gaps():
    parts = pieces()
    joiner = Joiner.create("silence", 50, RATE)
    out = joiner.join(parts)
    gap = round(0.05 * RATE)
    assert len(out) == sum(map(len, parts)) + 2 * gap == sum(map(len, parts)) + joiner.overhead(3)
    start = len(parts[0])
    assert np.array_equal(out[:start], parts[0])
    assert not out[start:start + gap].any()
    assert np.array_equal(out[start + gap:start + gap + len(parts[1])], parts[1])


def test_crossfade_lengths_and_content():
    parts = pieces()
    joiner = Joiner.create("crossfade", 20, RATE)
    overlap = round(0.02 * RATE)
    out = joiner.join(parts)
    assert len(out) == sum(map(len, parts)) - 2 * overlap == sum(map(len, parts)) + joiner.overhead(3)
    a, b = parts[0], parts[1]
    fade_out, fade_in = raised_cosine_fade(overlap)
    seam = len(a) - overlap
    assert np.array_equal(out[:seam], a[:seam])
    np.testing.assert_allclose(out[seam:len(a)], a[seam:] * fade_out + b[:overlap] * fade_in, atol=1e-7)
    np.testing.assert_array_equal(out[len(a):len(a) + len(b) - 2 * overlap], b[overlap:len(b) - overlap])


def test_crossfade_has_no_click_where_concatenation_has_one():
    parts = pieces()
    largest_step_inside = max(np.abs(np.diff(p)).max() for p in parts)
    hard = np.abs(np.diff(Joiner.create("none", 0, RATE).join(parts))).max()
    soft = np.abs(np.diff(Joiner.create("crossfade", 20, RATE).join(parts))).max()
    assert hard > 3 * largest_step_inside          # the DC jump at the first seam is a click
    assert soft <= 1.05 * largest_step_inside      # faded: no step larger than the signals' own


def test_crossfade_of_a_continuous_signal_is_the_signal():
    fade_out, fade_in = raised_cosine_fade(480)
    np.testing.assert_allclose(fade_out + fade_in, 1.0, atol=1e-7)
    assert fade_in[0] < 1e-5 and fade_out[-1] < 1e-5
    signal = tone(0.5, 200, 0.5)
    cut, overlap = 5000, 480
    joined = Joiner.create("crossfade", 20, RATE).join([signal[:cut + overlap], signal[cut:]])
    np.testing.assert_allclose(joined, signal, atol=1e-6)


@pytest.mark.parametrize("method", ["none", "crossfade", "silence"])
def test_streamed_join_equals_whole_join(method):
    parts = pieces()
    joiner = Joiner.create(method, 30, RATE)
    rng = np.random.default_rng(0)

    def chunked(piece):
        cuts = np.sort(rng.choice(np.arange(1, len(piece)), size=5, replace=False))
        return list(np.split(piece, cuts)) + [np.zeros(0, np.float32)]

    streamed = np.concatenate(list(joiner.stream(chunked(p) for p in parts)))
    np.testing.assert_array_equal(streamed, joiner.join(parts))


def test_short_segments_shrink_the_overlap():
    parts = [tone(0.1, 200, 0.5), np.full(100, 0.2, np.float32), tone(0.1, 300, 0.5)]
    out = Joiner.create("crossfade", 20, RATE).join(parts)
    # The 100-sample segment limits its own overlap; the next fade spans the last 20 ms of the output so far.
    assert len(out) == sum(map(len, parts)) - 100 - 480


def test_bad_join_options():
    with pytest.raises(InputError):
        Joiner.create("fade", 20, RATE)
    with pytest.raises(InputError):
        Joiner.create("silence", -1, RATE)
