"""Model core on the tiny preset: shapes, flow invertibility, KV cache, losses, save/load."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_batch, make_model, perturb_offset_bias
from reference import step_difference

from llamavoice.config import FlowConfig, ModelConfig, preset
from llamavoice.errors import CheckpointError, ConfigError
from llamavoice.losses import VAELosses
from llamavoice.models.discriminators import Discriminators
from llamavoice.models.flow import LatentFlow
from llamavoice.models.llamavoice import LlamaVoice


def test_vae_shapes(tiny_model):
    cfg = tiny_model.config
    spl = cfg.audio.samples_per_latent
    audio = torch.randn(2, spl * 7 + 123)
    mu, logstd = tiny_model.vae.encode(audio)
    assert mu.shape == logstd.shape == (2, 7, cfg.vae.latent_dim)
    assert mu.dtype == torch.float32
    wav = tiny_model.vae.decode(mu)
    assert wav.shape == (2, 7 * spl)


def test_lm_shapes(tiny_model):
    batch = make_batch(tiny_model, [0.6, 1.0])
    lm = tiny_model.lm
    d = tiny_model.config.vae.latent_dim
    frames = tiny_model.vae.num_frames(batch.audio_lengths)
    target = torch.randn(2, int(frames.max()), d)
    prompt = torch.randn(2, 9, d)
    out = lm(batch.text, batch.text_lengths, prompt, torch.tensor([9, 5]), target, frames)
    assert out.mu.shape == out.logstd.shape == target.shape
    assert out.stop_logits.shape == (2, int(frames.max()) + 1)
    assert out.logstd.min() >= lm.cfg.min_logstd and out.logstd.max() <= lm.cfg.max_logstd


@pytest.mark.parametrize("coupling", ["affine", "rq"])
def test_flow_inverse_and_logdet(coupling):
    torch.manual_seed(0)
    flow = LatentFlow(6, FlowConfig(num_layers=3, hidden_dim=16, num_blocks=1, coupling=coupling))
    # Make it a non-trivial map: perturb every parameter away from its near-identity init.
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flow.eval()
    z = torch.randn(4, 5, 6)
    u, logdet = flow(z)
    assert u.shape == z.shape and logdet.shape == (4, 5)
    assert (flow.inverse(u) - z).abs().max() <= 1e-4
    assert not torch.allclose(u, z, atol=1e-2)
    # log|det J| against the numerical Jacobian of one frame.
    x = torch.randn(6, dtype=torch.float32)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x)
    expected = torch.linalg.slogdet(jac.double())[1]
    assert abs(flow(x[None])[1].item() - expected.item()) <= 1e-3


def test_retired_flow_context_dim_still_loads():
    """flow.context_dim was dropped (nothing ever fed the flow a context): configs saved before,
    which hold its "off" value 0, keep loading; a flow that needed a context is refused by name."""
    data = preset("tiny").to_dict()
    assert "context_dim" not in data["flow"]
    data["flow"]["context_dim"] = 0
    assert ModelConfig.from_dict(data) == preset("tiny")
    data["flow"]["context_dim"] = 3
    with pytest.raises(ConfigError, match="model.flow.context_dim"):
        ModelConfig.from_dict(data)


# The reading options (prenet, alignment block between two decoder stacks) change every decode path.
READING = {"prenet_dim": 16, "align_layer": 1, "align_heads": 2, "align_offset_range": 3}
LM_VARIANTS = [{"reduction_factor": 1}, {"reduction_factor": 2}, {"reduction_factor": 2, **READING}]


@pytest.mark.parametrize("lm_options", LM_VARIANTS, ids=["r1", "r2", "r2-reading"])
def test_kv_cache_matches_full_forward(tokenizer, lm_options):
    model = make_model(tokenizer, **lm_options).eval()
    perturb_offset_bias(model)
    r = model.lm.r
    lm, d = model.lm, model.config.vae.latent_dim
    torch.manual_seed(1)
    text = torch.randint(0, 200, (2, 11))
    text_lengths = torch.tensor([11, 6])
    prompt = torch.randn(2, 8, d)
    prompt_lengths = torch.tensor([8, 4])
    n_groups = 5
    target = torch.randn(2, n_groups * r, d)
    with torch.no_grad():
        full = [
            lm(text[i : i + 1, : text_lengths[i]], text_lengths[i : i + 1], prompt[i : i + 1, : prompt_lengths[i]],
               prompt_lengths[i : i + 1], target[i : i + 1], torch.tensor([n_groups * r]))
            for i in range(2)
        ]
        # Batched, left-padded, cached decoding of both items at once.
        hidden, cache = lm.prefill(text, text_lengths, prompt, prompt_lengths, room=n_groups)
        steps = []
        for k in range(n_groups):
            mu, logstd, stop = lm.heads(hidden[:, None])
            steps.append((mu[:, 0], logstd[:, 0], stop[:, 0]))
            hidden = lm.step(target[:, k * r : (k + 1) * r], cache)
    for i in range(2):
        for k in range(n_groups):
            mu_full = full[i].mu[0, k * r : (k + 1) * r]
            logstd_full = full[i].logstd[0, k * r : (k + 1) * r]
            assert (steps[k][0][i] - mu_full).abs().max() <= 1e-4
            assert (steps[k][1][i] - logstd_full).abs().max() <= 1e-4
            assert abs(steps[k][2][i] - full[i].stop_logits[0, k]) <= 1e-4


@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize("attention", ["sdpa", "math"])
@pytest.mark.parametrize("lm_options", LM_VARIANTS, ids=["r1", "r2", "r2-reading"])
def test_cached_step_matches_xtransformers_cached_forward(tokenizer, lm_options, attention, window):
    """The LM's prefill and steps compute what x-transformers' own cached forward computes, for a
    left-padded batch with an unconditional row, with either attention kernel and, with an alignment
    block, with or without the monotonic text window (which a full forward has not)."""
    model = make_model(tokenizer, **lm_options).eval()
    perturb_offset_bias(model)
    model.lm.attention = attention
    if model.lm.alignment is not None:
        model.lm.alignment.window = window
    assert step_difference(model.lm, steps=4) <= 1e-4


def test_losses_finite_and_gan(tiny_model):
    batch = make_batch(tiny_model, [0.5, 0.8])
    tiny_model.train()
    losses = tiny_model.lm_losses(batch, train_encoder=True)
    assert set(losses) == {"kl", "stop", "vae_kl", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert tiny_model.vae.encoder.out_proj.weight.grad is not None

    cfg = tiny_model.config
    vae_losses, disc = VAELosses(cfg.audio, cfg.loss), Discriminators(cfg.loss)
    mu, logstd = tiny_model.vae.encode(batch.audio)
    fake = tiny_model.vae.decode(mu)
    real = batch.audio[:, : fake.shape[1]]
    gen = vae_losses.generator(real, fake, disc(real, fake))
    dis = vae_losses.discriminator(disc(real, fake.detach()))
    for value in list(gen.values()) + list(dis.values()):
        assert torch.isfinite(value)
    assert gen["mel"] > 0


def test_lm_loss_falls_when_overfitting(tokenizer):
    model = make_model(tokenizer)
    batch = make_batch(model, [0.6, 0.9, 0.7])
    model.train()
    model.config.lm.text_dropout = model.config.lm.prompt_dropout = 0.0
    params = list(model.flow.parameters()) + list(model.lm.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    torch.manual_seed(0)
    history = []
    for _ in range(100):
        loss = model.lm_losses(batch)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    start, end = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert start - end >= 0.5 * abs(start), (start, end)


def test_save_load_identical(tmp_path, tiny_model):
    model = tiny_model.eval()
    batch = make_batch(model, [0.5, 0.7])
    path = model.save_pretrained(tmp_path / "m")
    loaded = LlamaVoice.from_pretrained(path)
    assert loaded.config == model.config
    with torch.no_grad():
        z = torch.randn(1, 6, model.config.vae.latent_dim)
        assert torch.equal(model.vae.decode(z), loaded.vae.decode(z))
        assert torch.equal(model.flow(z)[0], loaded.flow(z)[0])
        u = torch.randn(2, 7, model.config.vae.latent_dim)
        frames = torch.tensor([7, 5])
        a = model.lm(batch.text, batch.text_lengths, u, frames, u, frames)
        b = loaded.lm(batch.text, batch.text_lengths, u, frames, u, frames)
        assert torch.equal(a.mu, b.mu) and torch.equal(a.stop_logits, b.stop_logits)
    assert loaded.tokenizer.encode("Hello there.") == model.tokenizer.encode("Hello there.")


def test_save_half_precision_loads_as_fp32(tmp_path, tiny_model):
    path = tiny_model.save_pretrained(tmp_path / "m16", dtype=torch.float16)
    loaded = LlamaVoice.from_pretrained(path)
    w0, w1 = tiny_model.lm.gaussian_head.weight, loaded.lm.gaussian_head.weight
    assert w1.dtype == torch.float32
    assert (w0 - w1).abs().max() <= 1e-3


def test_checkpoint_errors(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="not found"):
        LlamaVoice.from_pretrained(tmp_path / "nope")
    path = tiny_model.save_pretrained(tmp_path / "m")

    weights = path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        LlamaVoice.from_pretrained(path)
    weights.write_bytes(good)

    meta = json.loads((path / "config.json").read_text())
    meta["format_version"] = "99.0"
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format 99.0"):
        LlamaVoice.from_pretrained(path)

    meta["format_version"] = "1.0"
    meta["model"]["lm"]["depth"] = 3
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match its config"):
        LlamaVoice.from_pretrained(path)

    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        LlamaVoice.from_pretrained(path)


def test_presets_parameter_budget(tokenizer):
    small = LlamaVoice(preset("small"), None).num_parameters()
    assert small["total"] <= 30_000_000
    tiny = LlamaVoice(preset("tiny"), None).num_parameters()
    assert tiny["total"] < 1_000_000


@pytest.mark.parametrize("lm_options", LM_VARIANTS[1:], ids=["r2", "r2-reading"])
def test_voice_prefix_cache_matches_full_prefill(tokenizer, lm_options):
    model = make_model(tokenizer, **lm_options).eval()
    perturb_offset_bias(model)
    lm, d = model.lm, model.config.vae.latent_dim
    torch.manual_seed(2)
    prompt = torch.randn(1, 10, d)
    group = torch.randn(1, 2, d)
    prefix = lm.prefill_prompt(prompt)
    with torch.no_grad():
        for length in (7, 3):  # two sentences through the same cached voice prefix
            text = torch.randint(0, 200, (1, length))
            h_full, cache_full = lm.prefill(text, torch.tensor([length]), prompt, torch.tensor([10]), room=1)
            h_pre, cache_pre = lm.prefill_text(text, prefix, room=1)
            assert (h_full - h_pre).abs().max() <= 1e-4
            s_full = lm.step(group, cache_full)
            s_pre = lm.step(group, cache_pre)
            assert (s_full - s_pre).abs().max() <= 1e-4
