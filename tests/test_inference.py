"""Inference on a tiny model trained a few steps: behaviour, lengths, determinism and errors.

The audio is noise (the model is barely trained); what is checked is that the pieces agree with
each other: cached = uncached decoding, streamed = one-shot, batched = one by one, a seed = the
same output, and that every user mistake gives a clear LlamaVoiceError.
"""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_model, perturb_offset_bias, single_thread, synth_audio, write_clip
from reference import full_forward_generate, step_difference

import llamavoice
from llamavoice.errors import AudioError, CheckpointError, ConfigError, InferenceMemoryError, TextError
from llamavoice.inference import api
from llamavoice.inference.api import TTS, derive_seed
from llamavoice.inference.generator import GenerationItem, LatentGenerator
from llamavoice.inference.sampling import SamplingConfig, StepParams, initial_state, sample_step
from llamavoice.inference.streaming import (
    CrossfadeJoiner,
    StreamingDecoder,
    decoder_context,
    join_segments,
    stretch_latents,
)
from llamavoice.inference.voice import Voice

TEXT = "The quick brown fox jumps over the lazy dog."
TWO = "Hello there. How are you today?"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def tts(trained_model_dir) -> TTS:
    # fp32: these tests check that implementations agree exactly (reduced precisions: test_runtime.py).
    return llamavoice.load(trained_model_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "ref.wav", 4.0, seed=3)


def rms(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


def length_bounds(tts: TTS, text: str, cfg: SamplingConfig) -> tuple[int, int]:
    """Sample-count bounds of ``text``: sum over chunks of min/max frames, minus the cross-fades."""
    chunks = tts._chunks(text, cfg.max_chars)
    lo = hi = 0
    for c in chunks:
        a, b = cfg.frame_limits(c.chars, tts.frame_rate)
        lo, hi = lo + a, hi + b
    spf, fade = tts.samples_per_frame, round(cfg.crossfade_seconds * tts.sample_rate)
    return lo * spf - fade * (len(chunks) - 1), hi * spf


# --- API round trips ------------------------------------------------------------------------------


def test_synthesize_writes_valid_wav_of_plausible_length(tts, clip, tmp_path):
    audio, sr = tts.synthesize(TEXT, voice=clip, seed=1)
    assert sr == 24000 and audio.dtype == np.float32 and audio.ndim == 1
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    lo, hi = length_bounds(tts, TEXT, tts.sampling)
    assert lo <= audio.shape[0] <= hi
    assert audio.shape[0] % tts.samples_per_frame == 0  # one chunk: whole latent frames
    path = tmp_path / "out.wav"
    from llamavoice.audio import save_audio

    save_audio(path, audio, sr)
    info = sf.info(str(path))
    assert info.samplerate == sr and info.frames == audio.shape[0] and info.channels == 1


def test_module_level_synthesize_and_default_voice(tts, trained_model_dir):
    a, sr = llamavoice.synthesize(TEXT, model=trained_model_dir, device="cpu", dtype="fp32", seed=4)
    b, _ = tts.synthesize(TEXT, seed=4)  # voice=None: the model's voices/default.safetensors
    c, _ = tts.synthesize(TEXT, voice="default", seed=4)
    assert sr == tts.sample_rate
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(b, c)
    assert tts.list_voices() == ["default"]


def test_seed_reproducibility(tts, clip):
    a, _ = tts.synthesize(TWO, voice=clip, seed=11)
    b, _ = tts.synthesize(TWO, voice=clip, seed=11)
    c, _ = tts.synthesize(TWO, voice=clip, seed=12)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.allclose(a, c)
    # No seed: drawn from torch's global RNG, so torch.manual_seed makes it repeatable too.
    torch.manual_seed(5)
    d, _ = tts.synthesize(TEXT, voice=clip)
    torch.manual_seed(5)
    e, _ = tts.synthesize(TEXT, voice=clip)
    np.testing.assert_array_equal(d, e)


@pytest.mark.parametrize("cfg_weight", [0.0, 1.5])
@pytest.mark.parametrize("voice_prefix", [False, True])
def test_cached_and_uncached_decoding_agree(tts, clip, cfg_weight, voice_prefix):
    """Cached decoding (the LM's KV buffers, filled by a batched prefill or from the voice's cached
    prefix) gives the latents of a full forward pass at every step."""
    cfg = tts.sampling.replace(cfg_weight=cfg_weight, min_temperature=0.3)
    voice = Voice(tts.get_voice(str(clip)).latents[:40])
    store = voice.prefixes if voice_prefix else None
    items = [
        GenerationItem(tts.tokenizer.encode(t), voice.latents, seed, 5, 30, prefix_store=store)
        for t, seed in [(TEXT, 1), ("Hi.", 2)]
    ]
    cached = tts.generator.generate(items, cfg)
    assert len(voice.prefixes) == (1 if voice_prefix else 0)
    uncached = full_forward_generate(tts.generator, items, cfg)
    for a, b in zip(cached, uncached, strict=True):
        assert a.u.shape == b.u.shape and a.u.shape[0] >= 5
        assert (a.u - b.u).abs().max() <= 1e-4
        assert (a.z - b.z).abs().max() <= 1e-3


def test_cached_and_uncached_agree_with_reduction_factor(tokenizer):
    model = make_model(tokenizer, reduction_factor=2).eval()
    gen = LatentGenerator(model)
    prompt = torch.randn(10, model.config.vae.latent_dim)
    items = [GenerationItem(tokenizer.encode(TEXT), prompt, 3, 4, 17)]
    cfg = SamplingConfig(stop_threshold=2.0)  # never stops: runs to max length
    a = gen.generate(items, cfg)[0]
    b = full_forward_generate(gen, items, cfg)[0]
    assert a.u.shape[0] == b.u.shape[0] == 18  # 9 groups of 2 frames: max length rounded up to groups
    assert (a.u - b.u).abs().max() <= 1e-4


@pytest.mark.parametrize("cfg_weight", [0.0, 1.5])
def test_cached_step_runs_the_alignment_block(tokenizer, cfg_weight):
    """An LM with a prenet and an alignment block between two decoder stacks: its cached step reads the
    text between the stacks, and cached = uncached for a batch with a voice prefix and guidance."""
    model = make_model(tokenizer, reduction_factor=2, prenet_dim=16, align_layer=1, align_heads=2,
                       align_offset_range=3).eval()
    perturb_offset_bias(model)
    gen = LatentGenerator(model, align_window=0)  # the full-forward reference has no window
    assert model.lm.align_before == 1
    voice = Voice(torch.randn(12, model.config.vae.latent_dim))
    cfg = SamplingConfig(stop_threshold=2.0, cfg_weight=cfg_weight)
    for store in (None, voice.prefixes):
        items = [GenerationItem(tokenizer.encode(t), voice.latents, seed, 4, 13, prefix_store=store)
                 for t, seed in [(TEXT, 1), ("Hi.", 2)]]
        cached = gen.generate(items, cfg)
        uncached = full_forward_generate(gen, items, cfg)
        for a, b in zip(cached, uncached, strict=True):
            assert a.u.shape == b.u.shape == (14, model.config.vae.latent_dim)
            assert (a.u - b.u).abs().max() <= 1e-4


def test_stream_joined_equals_synthesize(tts, clip):
    full, _ = tts.synthesize(TWO, voice=clip, seed=21)
    chunks = list(tts.stream(TWO, voice=clip, seed=21, chunk_frames=3, max_chunk_frames=None))
    assert len(chunks) >= 4
    joined = np.concatenate(chunks)
    assert rms(joined, full) <= 1e-3
    assert np.abs(joined - full).max() <= 1e-3
    # With a speed change, the time stretch runs incrementally too.
    full, _ = tts.synthesize(TEXT, voice=clip, seed=22, speed=1.3)
    joined = np.concatenate(list(tts.stream(TEXT, voice=clip, seed=22, speed=1.3, chunk_frames=5)))
    assert rms(joined, full) <= 1e-3


def test_stream_does_not_leak_inference_mode(tts, clip):
    for _chunk in tts.stream("Hi.", voice=clip, seed=1):
        assert not torch.is_inference_mode_enabled()
        assert torch.is_grad_enabled()


def test_streaming_decoder_matches_one_shot_decode(tts):
    vae = tts.model.vae
    torch.manual_seed(0)
    z = torch.randn(37, tts.model.config.vae.latent_dim)
    with torch.inference_mode():
        whole = vae.decode(z[None])[0].numpy()
        decode = lambda x: vae.decode(x[None])[0]  # noqa: E731
        context = decoder_context(vae)
        for chunk in (1, 4, 7):
            dec = StreamingDecoder(decode, tts.samples_per_frame, context, chunk)
            pieces = []
            for start in range(0, 37, 3):  # frames arrive 3 at a time
                pieces += dec.push(z[start : start + 3])
            pieces += dec.finish()
            assert np.abs(np.concatenate(pieces) - whole).max() <= 1e-4
            assert all(p.shape[0] == chunk * tts.samples_per_frame for p in pieces[:-1])
        # Growing chunks: 2, 4, 8, 8, ... frames.
        dec = StreamingDecoder(decode, tts.samples_per_frame, context, 2, max_chunk_frames=8)
        pieces = dec.push(z) + dec.finish()
        assert [p.shape[0] // tts.samples_per_frame for p in pieces[:4]] == [2, 4, 8, 8]
        assert np.abs(np.concatenate(pieces) - whole).max() <= 1e-4
        # Too little look-ahead breaks the equality: the context is needed, not decorative.
        dec = StreamingDecoder(decode, tts.samples_per_frame, 0, 4)
        pieces = dec.push(z) + dec.finish()
        assert np.abs(np.concatenate(pieces) - whole).max() > 1e-3


def test_batch_equals_one_by_one(tts, clip, tmp_path):
    other = write_clip(tmp_path / "other.flac", 5.0, sample_rate=16000, seed=9)
    texts = [TEXT, "Hi.", TWO]
    voices = [clip, other, None]
    seeds = [1, 2, 3]
    batch = tts.synthesize_batch(texts, voices, seeds=seeds, batch_size=4)
    for text, voice, seed, got in zip(texts, voices, seeds, batch, strict=True):
        single, _ = tts.synthesize(text, voice, seed=seed)
        assert got.shape == single.shape
        assert np.abs(got - single).max() <= 1e-4


def test_long_text_split_on_any_punctuation_and_crossfaded(tts):
    text = "First sentence here。Second one？Third, with a clause! " + "Word " * 120
    chunks = tts._chunks(text, 60)
    assert len(chunks) >= 5
    assert chunks[0].text.endswith("。") and chunks[1].text.endswith("？")
    assert all(len(c.text) <= 60 for c in chunks)
    audio, sr = tts.synthesize(text, seed=3, max_chars=60, max_seconds=0.6, progress=False)
    cfg = tts.sampling.replace(max_chars=60, max_seconds=0.6)
    lo, hi = length_bounds(tts, text, cfg)
    assert lo <= audio.shape[0] <= hi


def test_crossfade_joiner_streams_like_whole_segments():
    rng = np.random.default_rng(0)
    segments = [rng.standard_normal(n).astype(np.float32) for n in (500, 30, 800, 7, 300)]
    whole = join_segments(segments, fade=64)
    # The cross-fade overlaps min(fade, previous, next) samples at each join.
    overlaps = [min(64, a.shape[0], b.shape[0]) for a, b in zip(segments[:-1], segments[1:], strict=True)]
    assert whole.shape[0] == sum(s.shape[0] for s in segments) - sum(overlaps)
    np.testing.assert_array_equal(whole[:400], segments[0][:400])
    joiner, pieces = CrossfadeJoiner(64), []
    for seg in segments:
        joiner.begin()
        for start in range(0, seg.shape[0], 13):
            pieces.append(joiner.push(seg[start : start + 13]))
        pieces.append(joiner.end())
    pieces.append(joiner.finish())
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-6)


def test_speed_stretches_duration(tts, clip):
    base, _ = tts.synthesize(TEXT, voice=clip, seed=8)
    fast, _ = tts.synthesize(TEXT, voice=clip, seed=8, speed=2.0)
    slow, _ = tts.synthesize(TEXT, voice=clip, seed=8, speed=0.5)
    frames = base.shape[0] // tts.samples_per_frame
    assert fast.shape[0] == math.ceil(frames / 2.0) * tts.samples_per_frame
    assert slow.shape[0] == 2 * frames * tts.samples_per_frame
    z = torch.randn(9, 4)
    np.testing.assert_allclose(stretch_latents(z, 0.5)[::2].numpy(), z.numpy(), atol=1e-6)


def test_length_limits_follow_the_text(tts, clip):
    voice = tts.get_voice(str(clip))
    never = tts.sampling.replace(stop_threshold=2.0, seed=1)
    always = tts.sampling.replace(stop_threshold=0.0, seed=1)
    for text in ("Hi.", TEXT):
        chunk = tts._chunks(text, 200)[0]
        lo, hi = never.frame_limits(chunk.chars, tts.frame_rate)
        assert 0 < lo < hi
        long_audio, _ = tts.synthesize(text, voice, sampling=never)
        short_audio, _ = tts.synthesize(text, voice, sampling=always)
        assert long_audio.shape[0] == hi * tts.samples_per_frame
        assert short_audio.shape[0] == lo * tts.samples_per_frame
    assert voice.num_frames > 0
    # A longer text gets a longer maximum.
    assert never.frame_limits(200, 25.0)[1] > never.frame_limits(20, 25.0)[1]


def test_best_of_n_uses_the_scorer(tts, clip):
    calls = []

    def longest(audio: np.ndarray, sr: int, text: str) -> float:
        calls.append(audio.shape[0])
        return float(audio.shape[0])

    audio, _ = tts.synthesize(TEXT, voice=clip, seed=2, num_samples=3, scorer=longest)
    assert len(calls) == 3 and audio.shape[0] == max(calls)
    calls.clear()
    audio, _ = tts.synthesize(TEXT, voice=clip, seed=2, num_samples=3, scorer=lambda a, sr, t: -longest(a, sr, t))
    assert audio.shape[0] == min(calls)
    # Without a scorer: the most likely candidate that stopped by itself; still reproducible.
    a, _ = tts.synthesize(TEXT, voice=clip, seed=2, num_samples=3)
    b, _ = tts.synthesize(TEXT, voice=clip, seed=2, num_samples=3)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="cannot stream"):
        next(tts.stream(TEXT, voice=clip, num_samples=2))


def test_lm_precision_and_attention_backend(trained_model_dir, clip):
    ref = llamavoice.load(trained_model_dir, device="cpu", dtype="fp32")
    a, _ = ref.synthesize(TEXT, voice=clip, seed=6, stop_threshold=2.0, max_seconds=1.0)
    math_tts = llamavoice.load(trained_model_dir, device="cpu", dtype="fp32", attention="math")
    assert math_tts.model.lm.attention == "math" and ref.model.lm.attention == "sdpa"
    b, _ = math_tts.synthesize(TEXT, voice=clip, seed=6, stop_threshold=2.0, max_seconds=1.0)
    assert np.abs(a - b).max() <= 1e-3
    bf16 = llamavoice.load(trained_model_dir, device="cpu", dtype="bf16")
    assert bf16.model.lm.latent_in.weight.dtype == torch.bfloat16
    assert bf16.model.vae.decoder.backbone.embed.weight.dtype == torch.bfloat16
    assert bf16.model.vae.encoder.input_proj.weight.dtype == torch.float32
    c, _ = bf16.synthesize(TEXT, voice=clip, seed=6, stop_threshold=2.0, max_seconds=1.0)
    assert c.shape == a.shape and np.isfinite(c).all()
    # What the load-time check used to ask: the reduced-precision step stays near x-transformers' own.
    assert step_difference(bf16.model.lm) <= 5e-2


# --- voices -------------------------------------------------------------------------------------------


def test_voice_encode_save_load_is_safetensors(tts, tmp_path):
    stereo = write_clip(tmp_path / "stereo.flac", 6.0, sample_rate=44100, channels=2, seed=4)
    voice = tts.encode_voice(stereo)
    assert abs(voice.num_frames - 6.0 * tts.frame_rate) <= 3  # silence trimming may take a little
    path = voice.save(tmp_path / "voice.pt")
    assert path.read_bytes()[8:9] == b"{"  # a safetensors JSON header, not a zip/pickle
    loaded = Voice.load(path)
    assert torch.equal(loaded.latents, voice.latents) and loaded.model_id == tts.model_id
    a, _ = tts.synthesize(TEXT, voice=voice, seed=3)
    b, _ = tts.synthesize(TEXT, voice=str(path), seed=3)
    np.testing.assert_array_equal(a, b)
    # A file that is not a voice is refused without being unpickled.
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"latents": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="not a LlamaVoice voice file"):
        Voice.load(evil)
    # An array clip works too (with its rate), and the same audio gives the same voice.
    audio = synth_audio(5.0, 16000, seed=4)
    v1 = tts.encode_voice(audio, sample_rate=16000)
    v2 = tts.encode_voice(audio, sample_rate=16000)
    assert torch.equal(v1.latents, v2.latents)


def test_voice_prefix_is_computed_once_and_reused(tts, clip):
    voice = tts.encode_voice(clip)
    assert not voice.prefixes
    a, _ = tts.synthesize(TWO, voice=voice, seed=3, batch_size=1)  # one sentence at a time: prefix path
    assert len(voice.prefixes) == 1
    prefix = next(iter(voice.prefixes.values()))
    b, _ = tts.synthesize(TWO, voice=voice, seed=3, batch_size=1)
    assert len(voice.prefixes) == 1 and next(iter(voice.prefixes.values())) is prefix
    np.testing.assert_array_equal(a, b)
    # Both sentences in one batch prefill the whole sequence instead: the same audio.
    c, _ = tts.synthesize(TWO, voice=voice, seed=3, batch_size=2)
    assert a.shape == c.shape and np.abs(a - c).max() <= 1e-4


def test_random_voice_is_seeded_and_reusable(tts, tmp_path):
    a = tts.random_voice(5)
    b = tts.random_voice(5)
    c = tts.random_voice(6)
    assert torch.equal(a.latents, b.latents)
    assert a.latents.shape != c.latents.shape or not torch.equal(a.latents, c.latents)
    x, _ = tts.synthesize(TEXT, voice="random", seed=5)
    y, _ = tts.synthesize(TEXT, voice=a, seed=5)
    np.testing.assert_array_equal(x, y)
    path = a.save(tmp_path / "random5.safetensors")
    assert torch.equal(Voice.load(path).latents, a.latents)


def test_default_voice_falls_back_to_random_when_missing(tts, trained_model_dir, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(trained_model_dir, bare, ignore=shutil.ignore_patterns("voices"))
    other = llamavoice.load(bare, device="cpu")
    with pytest.warns(UserWarning, match="no default voice"):
        voice = other.get_voice(None)
    assert torch.equal(voice.latents, other.random_voice(0).latents)


# --- sampling ---------------------------------------------------------------------------------------


def _step(mu, logstd, stop, noise, cfg, state=None, step=3, min_g=0, max_g=100):
    B = noise.shape[0]
    state = state or initial_state(B, noise.shape[-1], noise.device)
    p = StepParams.from_config(cfg, -5.0)
    return sample_step(mu, logstd, stop, noise, torch.randn_like(noise), torch.tensor(step),
                       torch.full((B,), min_g), torch.full((B,), max_g), state, p)


def test_sampling_temperature_guidance_and_dynamic_temperature():
    torch.manual_seed(0)
    mu, noise = torch.randn(2, 1, 4), torch.randn(2, 1, 4)
    logstd = torch.tensor([-4.0, 0.0])[:, None, None].expand(2, 1, 4)  # sure, unsure
    stop = torch.full((2,), -10.0)
    group, _ = _step(mu, logstd, stop, noise, SamplingConfig(temperature=0.0))
    assert torch.equal(group, mu)
    group, _ = _step(mu, logstd, stop, noise, SamplingConfig(temperature=0.5))
    torch.testing.assert_close(group, mu + 0.5 * logstd.exp() * noise)
    # Dynamic temperature: the unsure item gets min_temperature, the sure one keeps most of τ.
    group, _ = _step(mu, logstd, stop, noise, SamplingConfig(temperature=0.8, min_temperature=0.2))
    tau = (group - mu) / (logstd.exp() * noise)
    # log σ = -4 is 1/5 of the way from the LM's floor (-5) to 0: τ = 0.8 - 0.6 * 0.2.
    assert abs(tau[1].mean() - 0.2) < 1e-4 and abs(tau[0].mean() - 0.68) < 1e-4
    # Guidance on μ: conditional rows first, then unconditional; σ and stop from the conditional.
    mu2 = torch.cat([mu, mu - 1.0])
    group, _ = _step(mu2, torch.cat([logstd, logstd]), torch.cat([stop, stop]), noise,
                     SamplingConfig(temperature=0.0, cfg_weight=2.0))
    torch.testing.assert_close(group, mu + 2.0)


def test_stop_threshold_min_and_max_length():
    mu, logstd, noise = torch.zeros(3, 1, 4), torch.zeros(3, 1, 4), torch.randn(3, 1, 4)
    stop = torch.tensor([5.0, 5.0, -5.0])  # p ≈ 0.993, 0.993, 0.007
    cfg = SamplingConfig(stop_threshold=0.5)
    B = 3
    state = initial_state(B, 4, torch.device("cpu"))
    p = StepParams.from_config(cfg, -5.0)
    # Item 0: may stop (step >= min 2); item 1: min length 10 not reached; item 2: hits max 3.
    _, s = sample_step(mu, logstd, stop, noise, noise, torch.tensor(3), torch.tensor([2, 10, 0]),
                       torch.tensor([50, 50, 3]), state, p)
    assert s.alive.tolist() == [False, True, False]
    assert s.natural_stop.tolist() == [True, False, False]
    _, s = sample_step(mu, logstd, stop, noise, noise, torch.tensor(3), torch.tensor([2, 10, 0]),
                       torch.tensor([50, 50, 3]), state, StepParams.from_config(SamplingConfig(stop_threshold=1.5), -5))
    assert s.alive.tolist() == [True, True, False]


def test_stall_guard_resamples_then_stops(tokenizer):
    # A greedy, never-stopping untrained model settles into a fixed point: a stall.
    model = make_model(tokenizer).eval()
    gen = LatentGenerator(model)
    item = GenerationItem(tokenizer.encode(TEXT), torch.zeros(0, model.config.vae.latent_dim), 1, 0, 300)
    base = dict(temperature=0.0, stop_threshold=2.0, stall_frames=6)
    off = gen.generate([item], SamplingConfig(**base, stall_action="off"))[0]
    stop = gen.generate([item], SamplingConfig(**base, stall_action="stop"))[0]
    assert off.u.shape[0] == 300 and not off.stalled
    assert stop.stalled and stop.u.shape[0] < 100
    # The stalled tail really is near-identical frames.
    tail = stop.u[-4:]
    assert ((tail[1:] - tail[:-1]).norm(dim=-1) / tail[:-1].norm(dim=-1)).max() < 0.02
    resample = gen.generate([item], SamplingConfig(**base, stall_action="resample", stall_temperature=1.0))[0]
    assert resample.u.shape[0] > stop.u.shape[0]  # a fresh draw first, then the stop


def test_sampling_config_validation():
    with pytest.raises(ConfigError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(ConfigError, match="min_temperature"):
        SamplingConfig(temperature=0.5, min_temperature=0.9)
    with pytest.raises(ConfigError, match="unknown sampling option"):
        SamplingConfig().replace(temprature=0.3)
    with pytest.raises(ConfigError, match="stall_action"):
        SamplingConfig(stall_action="panic")
    assert derive_seed(1, 0, 0) != derive_seed(1, 1, 0) != derive_seed(2, 0, 0)


# --- errors -------------------------------------------------------------------------------------------


def test_error_cases(tts, trained_model_dir, tmp_path, monkeypatch):
    with pytest.raises(TextError, match="empty"):
        tts.synthesize("   ")
    with pytest.raises(TextError, match="no speakable words"):
        tts.synthesize("... !!! ???")
    short = write_clip(tmp_path / "short.wav", 1.0)
    with pytest.raises(AudioError, match="too short"):
        tts.encode_voice(short)
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not audio")
    with pytest.raises(AudioError, match="not a readable audio file"):
        tts.synthesize(TEXT, voice=bad)
    with pytest.raises(AudioError, match="neither a voice of this model"):
        tts.synthesize(TEXT, voice="nobody")
    with pytest.raises(CheckpointError, match="model directory not found"):
        llamavoice.load(tmp_path / "missing")
    monkeypatch.setattr(api, "DEFAULT_MODEL_DIR", tmp_path / "not-installed")
    with pytest.raises(CheckpointError, match="default model is not installed"):
        llamavoice.synthesize(TEXT)
    with pytest.raises(ConfigError, match="no CUDA GPU|unknown device"):
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        llamavoice.load(trained_model_dir, device="cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        llamavoice.load(trained_model_dir, device="banana")
    with pytest.raises(ConfigError, match="unknown dtype"):
        llamavoice.load(trained_model_dir, device="cpu", dtype="fp8")
    with pytest.raises(ConfigError, match="unknown option"):
        llamavoice.synthesize(TEXT, model=trained_model_dir, device="cpu", temprature=0.1)
    # A request far beyond memory is refused by the length caps before anything is allocated.
    with pytest.raises(ConfigError, match="max_seconds_per_char.*out of range"):
        tts.synthesize(TEXT, max_seconds_per_char=1e12)
    # An allocation failure that still happens (a big batch on a small GPU) is one actionable line.
    from llamavoice.inference.generator import memory_guard

    with pytest.raises(InferenceMemoryError, match="out of memory.*smaller batch"), memory_guard(tts.device, 4):
        torch.empty(2**62, dtype=torch.uint8)


def test_corrupt_checkpoint(trained_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        llamavoice.load(broken, device="cpu")


SKIP_COMPILE = os.environ.get("LLAMAVOICE_SKIP_COMPILE_TESTS", "0") not in ("", "0")


@pytest.mark.skipif(SKIP_COMPILE, reason="asked to skip torch.compile")
def test_compiled_step_matches_eager(trained_model_dir, clip):
    eager = llamavoice.load(trained_model_dir, device="cpu", dtype="fp32")
    compiled = llamavoice.load(trained_model_dir, device="cpu", dtype="fp32", compile=True)
    for text, seed in ((TEXT, 1), ("Hi.", 2)):  # a second length must not need a new graph to be right
        a, _ = eager.synthesize(text, voice=clip, seed=seed)
        b, _ = compiled.synthesize(text, voice=clip, seed=seed)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4
