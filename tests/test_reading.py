"""What makes a small LM learn to read: the phoneme front end, the alignment block's prior and
losses, the prior schedule, cached posteriors, and taking only the VAE from another model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, make_model, single_thread, synth_audio

from llamavoice.audio import load_audio, save_audio
from llamavoice.config import preset
from llamavoice.data.cache import LatentCache
from llamavoice.data.latents import LatentTTSDataset, collate_latents, fill_latent_cache, vae_cache_key
from llamavoice.data.manifest import DatasetError, ManifestEntry
from llamavoice.errors import CheckpointError, ConfigError
from llamavoice.losses import diagonality, guided_attention_loss
from llamavoice.models.llamavoice import LlamaVoice
from llamavoice.models.lm import beta_binomial_log_prior
from llamavoice.text.phonemes import WORD_BOUNDARY, phonemize
from llamavoice.text.tokenizer import META_FILE, TextTokenizer
from llamavoice.train.checkpoint import load_init_weights
from llamavoice.train.config import TrainConfig, align_prior_weight
from llamavoice.train.stages import lm_losses

READING = {"reduction_factor": 2, "prenet_dim": 16, "align_layer": 1, "align_heads": 2, "align_offset_range": 3}


# --- the phoneme front end ----------------------------------------------------------------------------
def test_phonemize_words_boundaries_and_punctuation():
    symbols = phonemize("Hello, world! Is it red?")
    assert symbols[:4] == ["h", "ɛ", "l", "ˈoʊ"]  # gruut's lexicon, stress kept on the vowel
    assert symbols[4] == ","
    assert symbols.count(WORD_BOUNDARY) == 4  # between the five words, also after punctuation
    assert "!" in symbols and symbols[-1] == "?"
    assert "ɹ" in symbols and "ˈɛ" in symbols  # 'red'
    # Out-of-lexicon words are guessed, not dropped.
    assert len(phonemize("zorblax")) >= 5


@pytest.fixture(scope="module")
def phoneme_tokenizer() -> TextTokenizer:
    return TextTokenizer.train([*SENTENCES, "The two dogs ran."], vocab_size=128, frontend="phonemes")


def test_phoneme_tokenizer_roundtrip_and_metadata(phoneme_tokenizer, tmp_path):
    tok = phoneme_tokenizer
    assert tok.frontend == "phonemes" and tok.vocab_size < 128
    ids = tok.encode("The 2 dogs ran.")  # numbers go through our normalizer first
    assert tok.decode(ids).split() == phonemize("The two dogs ran.")
    tok.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["frontend"] == "phonemes" and meta["phonemizer"].startswith("gruut ")
    again = TextTokenizer.load(tmp_path)
    assert again.frontend == "phonemes" and again.encode("The 2 dogs ran.") == ids


def test_tokenizer_saved_before_frontends_loads_as_bpe(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    del meta["frontend"]
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    old = TextTokenizer.load(tmp_path)
    assert old.frontend == "bpe" and old.encode("hello there") == tokenizer.encode("hello there")


def test_phoneme_vocabulary_larger_than_the_config_is_refused():
    with pytest.raises(ConfigError, match="vocab_size"):
        TextTokenizer.train(SENTENCES, vocab_size=10, frontend="phonemes")
    with pytest.raises(ConfigError, match="front end"):
        TextTokenizer.train(SENTENCES, vocab_size=300, frontend="letters")


# --- alignment prior and losses ---------------------------------------------------------------------------
def test_beta_binomial_prior_is_a_distribution_moving_along_the_diagonal():
    text_lengths, groups = torch.tensor([12, 5]), torch.tensor([20, 9])
    log_prior = beta_binomial_log_prior(text_lengths, groups, n_out=21, n_text=12)
    for b, (L, N) in enumerate(zip(text_lengths.tolist(), groups.tolist(), strict=True)):
        probs = log_prior[b, : N + 1, :L].exp()
        assert torch.allclose(probs.sum(-1), torch.ones(N + 1), atol=1e-4)
        modes = probs.argmax(-1)
        assert modes[0] == 0 and modes[-1] == L - 1 and bool((modes.diff() >= 0).all())


def _attention(kind: str, n: int, L: int) -> torch.Tensor:
    k = torch.arange(n)[:, None].float()
    j = torch.arange(L)[None].float()
    if kind == "uniform":
        a = torch.ones(n, L)
    else:
        target = (k + 0.5) / n * L - 0.5 if kind == "diagonal" else (n - 1 - k + 0.5) / n * L - 0.5
        a = torch.exp(-((j - target) ** 2) / 0.5)
    return (a / a.sum(-1, keepdim=True))[None, None]  # (1, 1, n, L)


def test_guided_attention_and_diagonality_rank_alignments():
    text_lengths, groups = torch.tensor([10]), torch.tensor([19])  # 20 output positions
    scores = {kind: (float(guided_attention_loss(_attention(kind, 20, 10), text_lengths, groups, 0.2)),
                     float(diagonality(_attention(kind, 20, 10), text_lengths, groups)))
              for kind in ("diagonal", "uniform", "anti")}
    assert scores["diagonal"][0] < 0.05 < scores["uniform"][0] < scores["anti"][0]
    assert scores["diagonal"][1] > 0.9 > 0.3 > scores["uniform"][1] > scores["anti"][1]
    # An item without text (dropped for guidance) counts for nothing.
    both = torch.cat([_attention("diagonal", 20, 10), _attention("anti", 20, 10)])
    loss = guided_attention_loss(both, torch.tensor([10, 0]), torch.tensor([19, 19]), 0.2)
    assert abs(float(loss) - scores["diagonal"][0]) < 1e-6


def test_alignment_attention_reads_only_real_text(tokenizer):
    model = make_model(tokenizer, **READING).eval()
    d = model.config.vae.latent_dim
    torch.manual_seed(0)
    text = torch.randint(0, 200, (2, 7))
    with torch.no_grad():
        out = model.lm(text, torch.tensor([7, 0]), torch.randn(2, 6, d), torch.tensor([6, 6]),
                       torch.randn(2, 10, d), torch.tensor([10, 6]), prior_weight=1.0)
    attn = out.alignment  # (B, heads, 6 output positions, 7)
    assert attn.shape == (2, 2, 6, 7)
    assert torch.allclose(attn[0].sum(-1), torch.ones(2, 6), atol=1e-5)
    assert float(attn[1].abs().max()) == 0.0  # no text: the block reads nothing
    assert torch.isfinite(out.mu).all() and torch.isfinite(out.stop_logits).all()
    # The prior steers what is read, but the attention the loss sees is the learned one alone.
    args = (text, torch.tensor([7, 0]), torch.randn(2, 6, d), torch.tensor([6, 6]), torch.randn(2, 10, d),
            torch.tensor([10, 6]))
    with torch.no_grad():
        with_prior, without = model.lm(*args, prior_weight=1.0), model.lm(*args, prior_weight=0.0)
    assert torch.allclose(with_prior.alignment, without.alignment, atol=1e-6)
    assert not torch.allclose(with_prior.mu, without.mu, atol=1e-4)


def test_prior_schedule_holds_then_fades():
    cfg = TrainConfig(train_manifest="x", align_prior_hold=100, align_prior_end=300)
    assert [align_prior_weight(cfg, s) for s in (0, 99, 100, 200, 300, 5000)] == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]


# --- cached posteriors ------------------------------------------------------------------------------------
@pytest.fixture()
def clips(tmp_path) -> list[ManifestEntry]:
    entries = []
    for i in range(4):
        wav = synth_audio(0.6 + 0.2 * i, 24000, seed=i)
        path = tmp_path / f"c{i}.wav"
        save_audio(path, wav, 24000)
        entries.append(ManifestEntry(str(path), SENTENCES[i], f"spk{i % 2}", len(wav) / 24000, 24000))
    return entries


def test_latent_cache_holds_the_vae_posterior_and_feeds_the_lm(tokenizer, clips, tmp_path):
    model = make_model(tokenizer, **READING)
    cache = LatentCache(tmp_path / "cache", vae_cache_key(model))
    with single_thread():
        assert fill_latent_cache(model, clips, cache, progress=False) == 4
        assert fill_latent_cache(model, clips, cache, progress=False) == 0  # all hits now
        data = LatentTTSDataset(clips, tokenizer, cache, model.config.audio.latent_rate, max_prompt_seconds=0.4,
                                min_prompt_seconds=0.2)
        item = data[1]
        audio = torch.from_numpy(load_audio(clips[1].audio, 24000)[0])[None]
        mu, logstd = model.eval().vae.encode(audio)
        assert torch.allclose(item["mu"], mu[0], atol=1e-5) and torch.allclose(item["logstd"], logstd[0], atol=1e-5)
        assert item["prompt_mu"].shape[0] <= 10 and clips[item["prompt_index"]].speaker == clips[1].speaker
        batch = collate_latents([data[i] for i in range(4)])
        losses = lm_losses(model.train(), batch, prior_weight=1.0)
    assert {"kl", "stop", "align", "diagonality"} <= set(losses) and torch.isfinite(losses["total"])
    losses["total"].backward()
    assert model.lm.alignment.to_q.weight.grad is not None and model.vae.encoder.out_proj.weight.grad is None
    # A different encoder is a different cache: its entries are misses, and the dataset says so.
    other = LatentCache(tmp_path / "cache", vae_cache_key(make_model(tokenizer, seed=3)))
    with pytest.raises(DatasetError, match="not in the latent cache"):
        LatentTTSDataset(clips, tokenizer, other, 25.0)


def test_transcripts_are_encoded_once_per_tokenizer(tokenizer, clips, tmp_path):
    model = make_model(tokenizer, **READING)
    cache = LatentCache(tmp_path / "cache", vae_cache_key(model))
    with single_thread():
        fill_latent_cache(model, clips, cache, progress=False)
    data = LatentTTSDataset(clips, tokenizer, cache, 25.0)
    (file,) = (tmp_path / "cache").glob("text_ids-*.json")
    saved = json.loads(file.read_text())
    assert saved == {c.text: tokenizer.encode(c.text) for c in clips}
    assert data[2]["text"].tolist() == tokenizer.encode(clips[2].text)
    # The next dataset reads the ids instead of encoding again (a planted id shows it)...
    saved[clips[2].text] = [7, 7, 7]
    file.write_text(json.dumps(saved))
    assert LatentTTSDataset(clips, tokenizer, cache, 25.0)[2]["text"].tolist() == [7, 7, 7]
    # ...while another tokenizer (another vocabulary) has its own file, and a broken file is rebuilt.
    other = TextTokenizer.train(SENTENCES, 290)
    assert other.fingerprint != tokenizer.fingerprint
    assert LatentTTSDataset(clips, other, cache, 25.0)[2]["text"].tolist() == other.encode(clips[2].text)
    assert len(list((tmp_path / "cache").glob("text_ids-*.json"))) == 2
    file.write_text("{not json")
    assert LatentTTSDataset(clips, tokenizer, cache, 25.0)[2]["text"].tolist() == tokenizer.encode(clips[2].text)


def test_init_parts_takes_only_the_vae_of_another_model(tokenizer, tmp_path):
    source = make_model(tokenizer, seed=1)
    source.save_pretrained(tmp_path / "src")
    target_cfg = preset("tiny")
    target_cfg.lm.reduction_factor, target_cfg.lm.align_layer, target_cfg.lm.prenet_dim = 2, 1, 16
    target = LlamaVoice(target_cfg, tokenizer)
    with pytest.raises(CheckpointError, match="different architecture"):
        load_init_weights(target, tmp_path / "src")
    lm_before = target.lm.latent_in.weight.clone()
    load_init_weights(target, tmp_path / "src", parts=["vae"])
    source_state = source.state_dict()
    assert all(torch.equal(v, source_state[k]) for k, v in target.state_dict().items() if k.startswith("vae."))
    assert torch.equal(target.lm.latent_in.weight, lm_before)


@pytest.mark.parametrize("align_layer", [0, 1])
def test_init_deepen_lm_starts_the_deeper_lm_as_the_loaded_one(tokenizer, tmp_path, align_layer):
    from conftest import make_batch

    source = make_model(tokenizer, seed=1, align_layer=align_layer)
    source.save_pretrained(tmp_path / "src")
    deeper = make_model(tokenizer, seed=2, align_layer=align_layer, depth=4)
    with pytest.raises(CheckpointError, match="lm.depth: 2 -> 4"):
        load_init_weights(deeper, tmp_path / "src")
    summary = load_init_weights(deeper, tmp_path / "src", deepen_lm=True)
    assert "grew from 2 to 4 layers" in summary
    batch = make_batch(source, [0.6, 0.9])
    source.eval(), deeper.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        before = source.lm_losses(batch)
        torch.manual_seed(0)
        after = deeper.lm_losses(batch)
    assert torch.allclose(before["kl"], after["kl"], rtol=1e-5) and torch.allclose(before["stop"], after["stop"])
    # The new blocks are live: a training step reaches the zeroed projections.
    deeper.train()
    deeper.lm_losses(batch)["total"].backward()
    stack = deeper.lm.decoder_upper if align_layer else deeper.lm.decoder
    assert stack.layers[-1][1].ff[-1].weight.grad.abs().sum() > 0
    # A shallower target is never "deepened".
    shallow = make_model(tokenizer, seed=3, align_layer=align_layer, depth=4)
    shallow.save_pretrained(tmp_path / "deep")
    with pytest.raises(CheckpointError, match="lm.depth: 4 -> 2"):
        load_init_weights(make_model(tokenizer, align_layer=align_layer), tmp_path / "deep", deepen_lm=True)


def test_config_refuses_cache_outside_stage_lm(tmp_path: Path):
    from llamavoice.train.config import load_run_config

    base = {"model": "tiny", "train": {"train_manifest": "m.jsonl", "stage": "vae", "latent_cache": "c"}}
    with pytest.raises(ConfigError, match="latent_cache"):
        load_run_config(data=base)
    with pytest.raises(ConfigError, match="init_parts"):
        load_run_config(data={"model": "tiny", "train": {"train_manifest": "m", "init_parts": ["decoder"]}})


def test_recipe_trains_on_cached_latents_with_phonemes_and_resumes(tmp_path):
    """The default model's recipe in miniature: stage lm from another model's VAE, phonemes, r = 2,
    prenet, alignment block with its prior, cached posteriors; then --resume continues it."""
    import importlib.util

    from conftest import write_corpus

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("train_script", root / "recipes" / "train.py")
    train_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_script)

    source = make_model(TextTokenizer.train(SENTENCES, 300), seed=1)
    source.save_pretrained(tmp_path / "vae_source")
    train, val = write_corpus(tmp_path / "train"), write_corpus(tmp_path / "val", speakers=2, per_speaker=2)
    run = tmp_path / "run"
    args = ["--config", str(root / "recipes" / "configs" / "tiny.yaml"), "--no-progress", "--run-dir", str(run)]
    for item in [f"train.train_manifest={train}", f"train.val_manifest={val}", "train.stage=lm",
                 "train.frame_budget_seconds=2.0", "train.max_utterance_seconds=2.0", "train.max_prompt_seconds=0.4",
                 f"train.init_from={tmp_path / 'vae_source'}", "train.init_parts=[vae]",
                 f"train.latent_cache={tmp_path / 'cache'}", "train.align_prior_hold=1", "train.align_prior_end=3",
                 "train.max_steps=2", "train.checkpoint_every=1", "train.val_every=2", "model.text.frontend=phonemes",
                 "model.text.vocab_size=128", "model.lm.reduction_factor=2", "model.lm.prenet_dim=16",
                 "model.lm.align_layer=1", "model.loss.align_weight=1.0"]:
        args += ["--set", item]
    with single_thread():
        assert train_script.main(args) == 0
        assert train_script.main([*args, "--set", "train.max_steps=3", "--resume"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    # Optimizer steps 0, 1, 2 (logged as 1, 2, 3): full strength up to step 1, half-way faded at 2.
    assert [r["align_prior"] for r in train_rows] == [1.0, 1.0, 0.5]
    assert all(0.0 <= r["diagonality"] <= 1.0 and r["align"] >= 0.0 for r in train_rows)
    val = [r for r in rows if r["split"] == "val"]
    assert val and "text_gap" in val[-1] and "diagonality" in val[-1]
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 9 + 4  # every train + val utterance, once
    exported = LlamaVoice.from_pretrained(run / "final")
    assert exported.tokenizer.frontend == "phonemes" and exported.lm.alignment is not None
    src = source.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in exported.state_dict().items() if k.startswith("vae."))


def test_alignment_window_reads_the_text_monotonically(tokenizer):
    """At inference each step reads near where the last one read, and never moves back."""
    model = make_model(tokenizer, **READING).eval()
    lm, d = model.lm, model.config.vae.latent_dim
    lm.alignment.window = 1
    torch.manual_seed(0)
    with torch.no_grad():
        _, cache = lm.prefill(torch.randint(0, 200, (1, 9)), torch.tensor([9]), torch.randn(1, 6, d),
                              torch.tensor([6]), room=12)
        positions = [int(cache.text.position)]
        for _ in range(12):
            lm.step(torch.randn(1, 2, d), cache)
            positions.append(int(cache.text.position))
        assert all(0 <= b - a <= 1 for a, b in zip(positions, positions[1:], strict=False))
        # One query with the reader at text position 4: nothing outside [3, 5] is read.
        text = lm.alignment.text_keys(torch.randn(1, 9, lm.cfg.dim), torch.ones(1, 9, dtype=torch.bool))
        text.position = torch.tensor([4])
        _, attn = lm.alignment(torch.randn(1, 1, lm.cfg.dim), text)
    assert float(attn[..., :3].abs().max()) == 0.0 and float(attn[..., 6:].abs().max()) == 0.0
    assert abs(float(attn.sum(-1).mean()) - 1.0) < 1e-5 and 4 <= int(text.position) <= 5


def test_reading_past_the_end_of_the_text_stops_within_the_hold(tokenizer):
    """With the monotonic window, a row that has read its last text token stops within
    ``end_hold_seconds`` even when the stop head never fires; the hold is off without the window."""
    from llamavoice.inference.generator import GenerationItem, LatentGenerator
    from llamavoice.inference.sampling import SamplingConfig

    model = make_model(tokenizer, **READING).eval()
    alignment = model.lm.alignment
    with torch.no_grad():  # a diagonal reader: step k reads text position k (a random one may never get there)
        offsets = torch.arange(-alignment.offset_range, alignment.offset_range + 1).float()
        alignment.offset_bias.copy_(-20.0 * offsets.abs().expand_as(alignment.offset_bias))
    d = model.config.vae.latent_dim
    item = GenerationItem(tokenizer.encode("Hi there, you."), torch.zeros(0, d), seed=3, max_frames=300)
    only_lengths = SamplingConfig(stop_threshold=2.0, stall_action="off")  # the stop head cannot end it
    with single_thread():
        gen = LatentGenerator(model)
        never = gen.generate([item], only_lengths.replace(end_hold_seconds=None))[0].u
        at_end = gen.generate([item], only_lengths.replace(end_hold_seconds=0.0))[0].u
        held = gen.generate([item], only_lengths.replace(end_hold_seconds=0.4))[0].u
        unwindowed = LatentGenerator(model, align_window=0).generate([item], only_lengths)[0].u
    assert never.shape[0] == 300 and unwindowed.shape[0] == 300
    assert 0 < at_end.shape[0] < 300
    # 0.4 s at 25 latent frames/s = 5 groups of r = 2 frames more, and the same frames up to the cut.
    assert held.shape[0] - at_end.shape[0] == 10 and torch.equal(held[: at_end.shape[0]], at_end)
