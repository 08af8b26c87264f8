"""The LM step on ONNX Runtime (llamavoice/inference/onnx.py): ``llamavoice export-onnx`` writes it
for a real (tiny) model with r = 2, a prenet and an alignment block; a TTS on the CPU then generates
with it, and it computes what the torch step computes, batched or alone, streamed or not."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import make_model, single_thread, train_briefly

import llamavoice
from llamavoice.errors import CheckpointError, ConfigError
from llamavoice.inference.generator import GenerationItem
from llamavoice.inference.onnx import OnnxStep, step_path
from llamavoice.inference.runtime import int8_available
from llamavoice.inference.sampling import SamplingConfig

pytestmark = pytest.mark.skipif(
    not int8_available() or any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason='needs the onnx extra (pip install "llamavoice[onnx]") and int8 kernels')

TEXT = "The quick brown fox jumps over the lazy dog."
TOLERANCE = 1e-2  # batched vs alone on the export (see test_export_keeps_batched_streamed_and_alone_equal)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory, tokenizer):
    """A trained tiny model with r = 2, a prenet and an alignment block (with its offset bias), exported
    by the CLI."""
    from llamavoice.cli import main

    model = train_briefly(make_model(tokenizer, reduction_factor=2, prenet_dim=16, align_layer=1, align_offset_range=3))
    path = model.save_pretrained(tmp_path_factory.mktemp("onnx") / "model")
    argv = sys.argv
    sys.argv = ["llamavoice", "export-onnx", "--model", str(path)]
    try:
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code in (0, None)
    finally:
        sys.argv = argv
    assert step_path(path).is_file()
    return path


def test_auto_uses_the_export_and_it_matches_torch(exported_dir):
    onnx_tts = llamavoice.load(exported_dir, device="cpu", threads=None)  # dtype auto: int8 on the CPU
    torch_tts = llamavoice.load(exported_dir, device="cpu", threads=None, onnx=False)
    assert isinstance(onnx_tts.generator.step_decoder, OnnxStep)  # (kept only if it passed the check)
    assert torch_tts.generator.step_decoder is None  # LatentLM.step
    voice = onnx_tts.random_voice(1)
    cfg = SamplingConfig(stop_threshold=2.0, temperature=0.0, max_seconds=1.0)
    a = onnx_tts.generate_latents(TEXT, voice, sampling=cfg)
    b = torch_tts.generate_latents(TEXT, voice, sampling=cfg)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()  # two 8-bit weight schemes, same arithmetic


def test_export_keeps_batched_streamed_and_alone_equal(exported_dir):
    tts = llamavoice.load(exported_dir, device="cpu", threads=None)
    gen = tts.generator
    dim = tts.model.config.vae.latent_dim
    items = [GenerationItem(tts.tokenizer.encode(TEXT), torch.randn(10, dim), 3, 4, 17),
             GenerationItem(tts.tokenizer.encode("Hi."), torch.randn(6, dim), 4, 2, 9)]
    cfg = SamplingConfig(stop_threshold=2.0)
    batched = gen.generate(items, cfg)
    for item, together in zip(items, batched, strict=True):
        alone = gen.generate([item], cfg)[0]
        assert together.u.shape == alone.u.shape
        # Rows never share a scale (one step: batched = alone to 5e-7), but the kernel rounds its inputs to
        # int8 per block, which can turn those 1e-7 differences into ~1e-3 ones over the steps.
        assert (together.u - alone.u).abs().max() <= TOLERANCE
    voice = tts.random_voice(2)
    full, _ = tts.synthesize(TEXT, voice, seed=5, max_seconds=1.5)
    joined = np.concatenate(list(tts.stream(TEXT, voice, seed=5, max_seconds=1.5, chunk_frames=3)))
    assert joined.shape == full.shape and np.abs(joined - full).max() <= 1e-3


def test_stale_or_missing_export(exported_dir, tmp_path, tokenizer):
    other = train_briefly(make_model(tokenizer, seed=5, reduction_factor=2, prenet_dim=16, align_layer=1))
    stale = other.save_pretrained(tmp_path / "other")
    step_path(stale).parent.mkdir()
    shutil.copy(step_path(exported_dir), step_path(stale))  # another model's export
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tts = llamavoice.load(stale, device="cpu", threads=None)
    assert tts.generator.step_decoder is None
    assert any("exported from other weights" in str(w.message) for w in caught)
    with pytest.raises(CheckpointError, match="export-onnx"):
        llamavoice.load(stale, device="cpu", threads=None, onnx=True)
    bare = other.save_pretrained(tmp_path / "bare")
    with pytest.raises(ConfigError, match="no exported LM step"):
        llamavoice.load(bare, device="cpu", threads=None, onnx=True)
    with pytest.raises(ConfigError, match="int8 weights on the CPU"):
        llamavoice.load(exported_dir, device="cpu", dtype="fp32", threads=None, onnx=True)
    assert llamavoice.load(exported_dir, device="cpu", dtype="fp32", threads=None).generator.step_decoder \
        is None  # fp32 asked for: the reference, never the 8-bit export


def test_continuous_batching_runs_on_the_export(exported_dir):
    """The server's decode loop (rows joining and leaving between steps) on the ONNX step."""
    from test_server_batching import run_batcher

    from llamavoice.inference.continuous import ContinuousBatcher

    tts = llamavoice.load(exported_dir, device="cpu", threads=None)
    assert isinstance(tts.generator.step_decoder, OnnxStep)
    voice = tts.random_voice(3)
    cfg = tts.sampling
    jobs = [(start, GenerationItem(tts.tokenizer.encode(text), voice.latents, 10 + k, 4, 20,
                                   prefix_store=voice.prefixes), cfg)
            for k, (text, start) in enumerate([(TEXT, 0), ("Hi there.", 2), ("How are you?", 5)])]
    got = run_batcher(ContinuousBatcher(tts.generator), jobs)
    for k, (_, item, _) in enumerate(jobs):
        alone = tts.generator.generate([item], cfg)[0].u
        mine = torch.cat(got[k])
        assert mine.shape == alone.shape
        assert (mine - alone).abs().max() <= TOLERANCE
