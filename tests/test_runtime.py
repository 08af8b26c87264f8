"""Precision and threads per machine (llamavoice/inference/runtime.py): what ``auto`` picks, that the
reduced precisions really are applied, stay close to fp32 and keep every guarantee of the fp32 path
(cached decoding, streamed = one-shot), and the thread rule."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import make_model, single_thread, train_briefly
from reference import full_forward_generate, step_difference
from torch import nn

import llamavoice
from llamavoice.errors import ConfigError
from llamavoice.inference import runtime
from llamavoice.inference.generator import LatentGenerator
from llamavoice.inference.runtime import Precision, apply_precision, default_threads, resolve_precision, set_threads

TEXT = "The quick brown fox jumps over the lazy dog."
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def test_auto_picks_per_part_and_device():
    auto = resolve_precision("auto", CPU)
    assert auto == resolve_precision(None, CPU)
    assert auto.lm == ("int8" if runtime.int8_available() else "fp32")
    assert auto.decoder == ("bf16" if runtime.cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", CPU) == Precision("fp32", "fp32")
    assert resolve_precision("bf16", CPU) == Precision("bf16", "bf16")
    assert resolve_precision(torch.bfloat16, CPU) == Precision("bf16", "bf16")
    assert resolve_precision("fp16", CPU) == Precision("fp16", "fp32")  # no fp16 decoder on the CPU
    assert resolve_precision("int8", CPU) == Precision("int8", "fp32")
    assert resolve_precision("int8,bf16", CPU) == Precision("int8", "bf16")
    assert resolve_precision("Float32", CPU).lm_dtype == torch.float32
    assert str(Precision("int8", "bf16")) == "int8,bf16" and str(Precision("fp32", "fp32")) == "fp32"


@pytest.mark.parametrize("bad, match", [
    ("fp8", "unknown dtype 'fp8'"),
    ("int8,fp16", "unknown decoder dtype 'fp16'"),
    ("fp32,int8", "unknown decoder dtype 'int8'"),
    ("fp32,fp32,fp32", "unknown dtype"),
])
def test_bad_dtype_is_one_clear_line(bad, match):
    with pytest.raises(ConfigError, match=match):
        resolve_precision(bad, CPU)


def test_int8_is_refused_off_the_cpu():
    with pytest.raises(ConfigError, match="int8 runs on the CPU only"):
        resolve_precision("int8", torch.device("cuda"))


@pytest.mark.skipif(not runtime.int8_available(), reason="no int8 kernels in this torch build")
def test_int8_lm_and_bf16_decoder_are_applied_where_they_belong(tokenizer):
    model = make_model(tokenizer, reduction_factor=2).eval()
    apply_precision(model, Precision("int8", "bf16"))
    lm = model.lm
    assert runtime.has_int8_layers(lm.decoder)
    assert not any(isinstance(m, nn.Linear) for m in lm.decoder.modules())  # no fp32 copy left behind
    assert all(m.qweight.dtype == torch.int8 for m in lm.decoder.modules() if isinstance(m, runtime.Int8Linear))
    # Input and output layers stay fp32: their error would go straight into the latents.
    for layer in (lm.latent_in, lm.gaussian_head, lm.stop_head):
        assert isinstance(layer, nn.Linear) and layer.weight.dtype == torch.float32
    assert model.vae.decoder.backbone.embed.weight.dtype == torch.bfloat16
    assert model.vae.decoder.head.out.weight.dtype == torch.float32  # the ISTFT head stays fp32
    assert model.vae.encoder.input_proj.weight.dtype == torch.float32
    assert next(model.flow.parameters()).dtype == torch.float32
    # The LM's cached step runs the quantized layers and agrees with x-transformers' cached forward.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen = LatentGenerator(model)
    assert gen.quantized and step_difference(lm) <= 5e-2


@pytest.mark.skipif(not runtime.int8_available(), reason="no int8 kernels in this torch build")
def test_reduced_precision_stays_close_to_fp32(trained_model_dir):
    """Teacher-forced on the same latents, the int8 LM predicts nearly the fp32 means (far inside the
    model's own sigma), and the bf16 decoder gives nearly the fp32 waveform."""
    ref = llamavoice.load(trained_model_dir, device="cpu", dtype="fp32", threads=None)
    fast = llamavoice.load(trained_model_dir, device="cpu", dtype="int8,bf16", threads=None)
    z = torch.from_numpy(ref.generate_latents(TEXT, seed=3, stop_threshold=2.0, max_seconds=1.0))
    with torch.inference_mode():
        u, _ = ref.model.flow(z)
        ids = torch.tensor([ref.tokenizer.encode(TEXT)])
        prompt = ref.get_voice(None).latents[None]
        args = (ids, torch.tensor([ids.shape[1]]), prompt, torch.tensor([prompt.shape[1]]), u[None],
                torch.tensor([u.shape[0]]))
        a, b = ref.model.lm(*args), fast.model.lm(*args)
        err = ((b.mu - a.mu) / a.logstd.exp()).abs()
        assert err.mean() < 0.05 and err.max() < 0.5
        wav_ref, wav = ref.model.vae.decode(z[None]), fast.model.vae.decode(z[None]).float()
    snr = 10 * torch.log10(wav_ref.pow(2).sum() / (wav - wav_ref).pow(2).sum())
    assert snr > 30


def test_auto_keeps_streamed_equal_to_one_shot(trained_model_dir):
    tts = llamavoice.load(trained_model_dir, device="cpu", threads=None)  # dtype auto
    assert tts.precision == resolve_precision("auto", CPU)
    full, _ = tts.synthesize(TEXT, seed=5)
    joined = np.concatenate(list(tts.stream(TEXT, seed=5, chunk_frames=3)))
    assert joined.shape == full.shape
    assert np.abs(joined - full).max() <= 1e-3


@pytest.mark.skipif(not runtime.int8_available(), reason="no int8 kernels in this torch build")
def test_int8_keeps_cached_uncached_and_batched_equal_with_reduction_factor_2(tokenizer):
    """r = 2 under int8: the cached steps give what a full forward gives, and a batch gives
    what each item gives alone (int8 weights, not int8 activations: rows never share a scale)."""
    from llamavoice.inference.generator import GenerationItem
    from llamavoice.inference.sampling import SamplingConfig

    model = train_briefly(make_model(tokenizer, reduction_factor=2))
    apply_precision(model, Precision("int8", "fp32"))
    gen = LatentGenerator(model)
    assert gen.step_decoder is None  # the LM's own step
    dim = model.config.vae.latent_dim
    items = [GenerationItem(tokenizer.encode(TEXT), torch.randn(10, dim), 3, 4, 17),
             GenerationItem(tokenizer.encode("Hi."), torch.randn(6, dim), 4, 2, 9)]
    cfg = SamplingConfig(stop_threshold=2.0)
    cached = gen.generate(items[:1], cfg)[0]
    uncached = full_forward_generate(gen, items[:1], cfg)[0]
    assert cached.u.shape == uncached.u.shape == (18, dim)
    assert (cached.u - uncached.u).abs().max() <= 1e-4
    batched = gen.generate(items, cfg)
    for item, together in zip(items, batched, strict=True):
        alone = gen.generate([item], cfg)[0]
        assert together.u.shape == alone.u.shape
        assert (together.u - alone.u).abs().max() <= 1e-5


@pytest.mark.parametrize("cores, load, expected", [
    (2, 0.1, 2),  # idle: every core
    (2, 1.0, 1),  # one core busy (e.g. a training job): one thread
    (2, 6.0, 1),  # overloaded: never fewer than one
    (16, 3.2, 4),  # many free cores: capped
    (8, 5.6, 2),
    (1, 0.0, 1),
])
def test_default_threads_follow_free_cores(cores, load, expected):
    assert default_threads(cores, load) == expected


def test_set_threads():
    before = torch.get_num_threads()
    try:
        assert set_threads(None) == before
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
        assert 1 <= set_threads("auto") <= runtime.MAX_AUTO_THREADS
        for bad in (0, -1, "many", 1.5, True):
            with pytest.raises(ConfigError, match="threads must be"):
                set_threads(bad)
    finally:
        torch.set_num_threads(before)
