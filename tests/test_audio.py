"""Audio I/O, level utilities and log-mel features, on real files written with soundfile."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from llamavoice.audio import (
    LogMelSpectrogram,
    active_rms_dbfs,
    clipping_ratio,
    is_silent,
    load_audio,
    load_prompt_audio,
    normalize_loudness,
    resample,
    rms_dbfs,
    save_audio,
    supported_formats,
    trim_silence,
)
from llamavoice.config import AudioConfig, preset
from llamavoice.errors import AudioError, LlamaVoiceError


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_freq(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


# --- loading ---------------------------------------------------------------------------------


def test_stereo_mixdown_is_channel_mean(tmp_path):
    left = sine(440, 16000, 0.5, amp=0.8)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), 16000, subtype="FLOAT")
    mono, sr = load_audio(path)
    assert sr == 16000 and mono.ndim == 1 and mono.dtype == np.float32
    np.testing.assert_allclose(mono, left / 2, atol=1e-6)
    both, _ = load_audio(path, mono=False)
    assert both.shape == (2, left.shape[0])
    np.testing.assert_allclose(both[0], left, atol=1e-6)


@pytest.mark.parametrize("orig_sr", [8000, 16000, 44100])
def test_resampled_to_24k_keeps_length_and_pitch(tmp_path, orig_sr):
    freq, seconds = 1000.0, 1.3
    path = tmp_path / f"tone_{orig_sr}.wav"
    sf.write(path, sine(freq, orig_sr, seconds), orig_sr)  # 16-bit PCM
    audio, sr = load_audio(path, 24000)
    n_orig = int(round(orig_sr * seconds))
    assert sr == 24000
    assert abs(audio.shape[0] - n_orig * 24000 / orig_sr) <= 1
    assert abs(peak_freq(audio, sr) - freq) < 2.0
    # amplitude survives (no gain error from the filter), away from the edges
    mid = audio[2400:-2400]
    assert np.max(np.abs(mid)) == pytest.approx(0.5, abs=0.02)


def test_downsampling_removes_content_above_new_nyquist():
    sr = 48000
    x = sine(15000, sr, 1.0)  # above 12 kHz Nyquist of 24 kHz: must not alias to 9 kHz
    y = resample(x, sr, 24000)
    assert rms_dbfs(y[1000:-1000]) < rms_dbfs(x) - 40


@pytest.mark.parametrize(
    "suffix,subtype",
    [(".flac", "PCM_16"), (".flac", "PCM_24"), (".wav", "PCM_24"), (".wav", "FLOAT"), (".wav", "PCM_U8")],
)
def test_formats_and_bit_depths_load(tmp_path, suffix, subtype):
    x = sine(300, 22050, 0.4, amp=0.6)
    path = tmp_path / f"x_{subtype}{suffix}"
    sf.write(path, x, 22050, subtype=subtype)
    y, sr = load_audio(path)
    assert sr == 22050 and y.dtype == np.float32
    tol = 1e-2 if subtype == "PCM_U8" else 1e-4
    np.testing.assert_allclose(y, x, atol=tol)


def test_ogg_loads_if_supported(tmp_path):
    if "OGG" not in supported_formats():
        pytest.skip("libsndfile built without OGG")
    x = sine(500, 24000, 0.5)
    path = tmp_path / "x.ogg"
    sf.write(path, x, 24000)
    y, sr = load_audio(path)
    assert sr == 24000 and abs(peak_freq(y, sr) - 500) < 3


def test_random_bytes_are_not_audio(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError) as err:
        load_audio(path)
    msg = str(err.value)
    assert str(path) in msg and "not a readable audio file" in msg and "WAV" in msg
    assert "\n" not in msg


def test_truncated_header(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, sine(440, 16000, 0.2), 16000)
    bad = tmp_path / "truncated.wav"
    bad.write_bytes(good.read_bytes()[:20])
    with pytest.raises(AudioError, match="truncated.wav"):
        load_audio(bad)


def test_missing_file_directory_and_empty_file(tmp_path):
    with pytest.raises(AudioError, match="not found") as err:
        load_audio(tmp_path / "nope.wav")
    assert "nope.wav" in str(err.value)
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(empty)


def test_zero_length_and_nonfinite_audio(tmp_path):
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(zero)
    x = sine(440, 16000, 0.1)
    x[10] = np.nan
    nan = tmp_path / "nan.wav"
    sf.write(nan, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(nan)


def test_audio_error_is_a_llamavoice_error():
    assert issubclass(AudioError, LlamaVoiceError)
    with pytest.raises(AudioError):
        resample(np.zeros(10, dtype=np.float32), 0, 24000)


# --- saving ----------------------------------------------------------------------------------


def test_save_load_round_trip_and_clipping(tmp_path):
    x = sine(220, 24000, 0.5, amp=0.7)
    path = tmp_path / "deep" / "dir" / "out.wav"
    save_audio(path, torch.from_numpy(x), 24000)
    info = sf.info(path)
    assert info.format == "WAV" and info.subtype == "PCM_16" and info.samplerate == 24000
    y, sr = load_audio(path)
    assert sr == 24000
    np.testing.assert_allclose(y, x, atol=1 / 32768 + 1e-6)

    loud = np.array([0.0, 1.5, -2.0, 0.5], dtype=np.float32)
    save_audio(tmp_path / "loud.flac", loud, 16000)
    z, _ = load_audio(tmp_path / "loud.flac")
    assert np.max(np.abs(z)) <= 1.0
    assert z[1] > 0.99 and z[2] <= -0.99 and z[3] == pytest.approx(0.5, abs=1e-4)

    stereo = np.stack([x, -x])
    save_audio(tmp_path / "st.wav", stereo, 24000, subtype="FLOAT")
    back, _ = load_audio(tmp_path / "st.wav", mono=False)
    np.testing.assert_allclose(back, stereo, atol=1e-7)


def test_save_rejects_bad_input(tmp_path):
    x = sine(220, 24000, 0.1)
    with pytest.raises(AudioError, match="channels"):
        save_audio(tmp_path / "a.wav", np.stack([x, x], axis=1), 24000)  # (samples, channels)
    with pytest.raises(AudioError, match="extension"):
        save_audio(tmp_path / "a.xyz", x, 24000)
    bad = x.copy()
    bad[3] = np.inf
    with pytest.raises(AudioError, match="NaN"):
        save_audio(tmp_path / "b.wav", bad, 24000)


# --- levels and silence ----------------------------------------------------------------------


def test_levels():
    assert rms_dbfs(np.ones(100, dtype=np.float32)) == pytest.approx(0.0, abs=1e-6)
    assert rms_dbfs(sine(100, 8000, 1.0, amp=1.0)) == pytest.approx(-3.01, abs=0.02)
    assert rms_dbfs(np.zeros(100, dtype=np.float32)) < -150
    assert is_silent(np.zeros(1000, dtype=np.float32))
    assert is_silent(sine(100, 8000, 1.0, amp=1e-4))
    assert not is_silent(sine(100, 8000, 1.0, amp=0.1))
    x = np.array([0.0, 1.0, -1.0, 0.5], dtype=np.float32)
    assert clipping_ratio(x) == 0.5
    assert clipping_ratio(x, level=0.4) == 0.75


def test_trim_silence_removes_padding():
    sr = 16000
    tone = sine(300, sr, 0.5)
    quiet_noise = (np.random.default_rng(1).standard_normal(sr) * 1e-4).astype(np.float32)
    x = np.concatenate([quiet_noise, tone, quiet_noise[: sr // 2]])
    y = trim_silence(x, sr, pad_ms=50)
    # 0.5 s of tone + up to 50 ms (+ one 10 ms frame) each side
    assert 0.5 * sr <= y.shape[0] <= 0.5 * sr + 2 * (0.06 * sr)
    assert not is_silent(y[: int(0.07 * sr)])  # the tone starts within the kept margin
    np.testing.assert_array_equal(trim_silence(np.zeros(100, dtype=np.float32), sr), np.zeros(100))


def test_normalize_loudness_hits_target_and_never_clips():
    sr = 16000
    speechy = np.concatenate(
        [np.zeros(sr // 2), sine(200, sr, 0.6, amp=0.01), np.zeros(sr // 4), sine(350, sr, 0.4, amp=0.02)]
    ).astype(np.float32)
    out = normalize_loudness(speechy, target_dbfs=-20.0)
    assert abs(active_rms_dbfs(out) - -20.0) < 0.5
    assert np.max(np.abs(out)) <= 0.95 + 1e-6

    # a target too loud for the peak limit: limited to the peak instead of clipping
    spiky = sine(200, sr, 0.5, amp=0.01)
    spiky[100] = 0.5
    out = normalize_loudness(spiky, target_dbfs=-10.0, peak=0.9)
    assert np.max(np.abs(out)) == pytest.approx(0.9, abs=1e-5)
    assert active_rms_dbfs(out) < -10.0

    silent = np.zeros(1000, dtype=np.float32)
    np.testing.assert_array_equal(normalize_loudness(silent), silent)


# --- voice prompts ---------------------------------------------------------------------------


def test_prompt_is_trimmed_cropped_and_normalized(tmp_path):
    sr_file = 16000
    x = np.concatenate([np.zeros(sr_file), sine(180, sr_file, 3.0, amp=0.05), np.zeros(sr_file)])
    path = tmp_path / "prompt.wav"
    sf.write(path, x, sr_file)
    p = load_prompt_audio(path, 24000)
    assert p.ndim == 1 and p.dtype == np.float32
    assert 3.0 <= p.shape[0] / 24000 <= 3.15
    assert abs(active_rms_dbfs(p) - -20.0) < 0.5
    cropped = load_prompt_audio(path, 24000, max_seconds=2.0)
    assert cropped.shape[0] == 2 * 24000


def test_silent_prompt(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(24000 * 2, dtype=np.float32), 24000)
    with pytest.raises(AudioError, match="silent") as err:
        load_prompt_audio(path, 24000)
    assert "silence.wav" in str(err.value)


def test_too_short_prompt(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, np.concatenate([np.zeros(8000), sine(200, 16000, 0.4), np.zeros(8000)]), 16000)
    with pytest.raises(AudioError, match="too short") as err:
        load_prompt_audio(path, 24000, min_seconds=1.0)
    msg = str(err.value)
    assert "short.wav" in msg and "1 s" in msg
    length = float(msg.split("too short: ")[1].split(" s")[0])
    assert 0.4 <= length <= 0.55  # the trimmed length is reported, not the padded file length


# --- log-mel features ------------------------------------------------------------------------


def test_logmel_shape_and_frame_rule():
    cfg = AudioConfig()
    mel = LogMelSpectrogram.from_config(cfg)
    for n in (240 * 10, 240 * 10 + 1, 240 * 10 - 1, 12345, 600, 300):
        out = mel(torch.randn(2, n) * 0.1)
        assert out.shape == (2, cfg.n_mels, n // cfg.hop_length + 1) == (2, cfg.n_mels, mel.num_frames(n))
    single = mel(torch.randn(4800) * 0.1)
    assert single.shape == (cfg.n_mels, 21)
    # the tiny preset shares the audio settings: 25 Hz latent = 4 mel frames
    assert preset("tiny").audio.samples_per_latent == 4 * cfg.hop_length


def test_logmel_matches_torchaudio_reference():
    mel = LogMelSpectrogram(sample_rate=16000, n_fft=512, hop_length=128, n_mels=64, f_max=7600)
    ref = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=512, hop_length=128, n_mels=64, f_max=7600,
        center=True, power=1.0, pad_mode="reflect",
    )
    x = torch.randn(2, 5000) * 0.2
    torch.testing.assert_close(mel(x), torch.log(ref(x).clamp(min=1e-5)), atol=1e-4, rtol=1e-4)


def test_logmel_finite_on_silence_and_fp32_under_autocast():
    mel = LogMelSpectrogram.from_config(AudioConfig())
    out = mel(torch.zeros(1, 2400))
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.full_like(out, float(np.log(1e-5))))
    tone = torch.from_numpy(sine(1000, 24000, 0.2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = mel(tone.to(torch.bfloat16))
    assert auto.dtype == torch.float32
    # the 1 kHz tone lands in the mel bins around 1 kHz
    fb_centres = mel.fbank.argmax(dim=1).float() * 24000 / 1024
    assert abs(fb_centres[auto.mean(dim=-1).argmax()].item() - 1000) < 100


def test_logmel_state_dict_is_empty_and_tiny_clips_work():
    mel = LogMelSpectrogram.from_config(AudioConfig())
    assert len(mel.state_dict()) == 0  # derived from config, not saved in checkpoints
    out = mel(torch.randn(50) * 0.1)  # shorter than n_fft // 2: zero padding fallback
    assert out.shape == (100, 1) and torch.isfinite(out).all()
