"""load_audio and the client-side input checks: no server needed."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from helpers import rel_err
from mambaserve.clients.audio import AudioError, load_audio
from mambaserve.clients.request import expand_prompts, prepare_audio
from mambaserve.contract import spec


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(round(sr * seconds), dtype=np.float64) / sr
    return amp * np.sin(2 * np.pi * freq * t + phase)


def test_int16_wav_at_16k_is_scaled_to_unit_range(tmp_path):
    ref = _sine(440, 16000, 0.5)
    pcm = np.round(ref * 32767).astype(np.int16)
    sf.write(tmp_path / "a.wav", pcm, 16000, subtype="PCM_16")
    got = load_audio(tmp_path / "a.wav")
    assert got.dtype == np.float32 and got.ndim == 1 and got.shape == ref.shape
    np.testing.assert_allclose(got, pcm / 32768.0, atol=1e-7)
    assert got.flags.c_contiguous


def test_float_wav_is_not_zeroed(tmp_path):
    # soundfile returns zeros when a float WAV is read as int16: load_audio must read it as float.
    ref = _sine(300, 16000, 0.25, amp=0.25)
    sf.write(tmp_path / "f.wav", ref, 16000, subtype="FLOAT")
    got = load_audio(str(tmp_path / "f.wav"))
    assert rel_err(got, ref) < 1e-6


def test_flac_24bit_and_bytes_input(tmp_path):
    ref = _sine(1000, 16000, 0.3, amp=0.8)
    path = tmp_path / "a.flac"
    sf.write(path, ref, 16000, subtype="PCM_24")
    from_path = load_audio(path)
    assert rel_err(from_path, ref) < 1e-5
    np.testing.assert_array_equal(load_audio(path.read_bytes()), from_path)
    np.testing.assert_array_equal(load_audio(io.BytesIO(path.read_bytes())), from_path)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = _sine(440, 16000, 0.2, amp=0.6), _sine(660, 16000, 0.2, amp=0.2)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    got = load_audio(tmp_path / "st.wav")
    assert got.ndim == 1
    assert rel_err(got, (left + right) / 2) < 1e-6


@pytest.mark.parametrize("source_sr", [8000, 22050, 44100])
def test_resampling_matches_an_analytic_sine(tmp_path, source_sr):
    freq, seconds = 440.0, 1.0
    sf.write(tmp_path / "in.flac", _sine(freq, source_sr, seconds), source_sr, subtype="PCM_24")
    got = load_audio(tmp_path / "in.flac")
    ref = _sine(freq, spec.SAMPLE_RATE, seconds)  # float64 reference at the target rate
    assert abs(got.shape[0] - ref.shape[0]) <= 1
    n = min(got.shape[0], ref.shape[0])
    edge = 400  # the resampling filter's transient at both ends (25 ms)
    assert rel_err(got[edge : n - edge], ref[edge : n - edge]) < 1e-4


def test_multichannel_44k_is_downmixed_then_resampled(tmp_path):
    sig = _sine(500, 44100, 0.5, amp=0.4)
    sf.write(tmp_path / "st.wav", np.stack([sig, sig, sig], axis=1), 44100, subtype="PCM_16")
    got = load_audio(tmp_path / "st.wav", target_sr=8000)
    ref = _sine(500, 8000, 0.5, amp=0.4)
    n = min(got.shape[0], ref.shape[0])
    assert rel_err(got[200 : n - 200], ref[200 : n - 200]) < 5e-4  # int16 quantisation ~6e-5


def test_output_is_clipped_to_unit_range(tmp_path):
    sf.write(tmp_path / "hot.wav", np.array([0.0, 1.7, -2.5, 0.3]), 16000, subtype="FLOAT")
    got = load_audio(tmp_path / "hot.wav")
    np.testing.assert_array_equal(got, np.array([0.0, 1.0, -1.0, 0.3], dtype=np.float32))


def test_unreadable_inputs_name_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEnot really audio")
    with pytest.raises(AudioError, match=r"broken\.wav"):
        load_audio(bad)
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio(b"\x00\x01 definitely not audio")
    with pytest.raises(FileNotFoundError, match=r"missing\.flac"):
        load_audio(tmp_path / "missing.flac")
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(tmp_path / "empty.wav")
    sf.write(tmp_path / "nan.wav", np.array([0.0, np.nan]), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")
    with pytest.raises(ValueError, match="target_sr"):
        load_audio(bad, target_sr=0)


def test_prepare_audio_checks_arrays():
    x = np.linspace(-0.5, 0.5, 100)
    got = prepare_audio(x)
    assert got.dtype == np.float32 and got.shape == (100,)
    assert prepare_audio(x[None, :]).shape == (100,)
    with pytest.raises(ValueError, match="1-D"):
        prepare_audio(np.zeros((2, 100)))
    with pytest.raises(ValueError, match="int16"):
        prepare_audio(np.zeros(100, dtype=np.int16))
    with pytest.raises(ValueError, match="NaN"):
        prepare_audio(np.array([0.0, np.inf]))


def test_expand_prompts():
    assert expand_prompts(None, 2) == [None, None]
    assert expand_prompts("hi", 3) == ["hi"] * 3
    assert expand_prompts(["a", None], 2) == ["a", None]
    with pytest.raises(ValueError, match="3 entries for 2"):
        expand_prompts(["a", "b", "c"], 2)
