#!/usr/bin/env python
"""Where a model's word errors come from, on the held-out test sentences in their own voices.

    python -m recipes.default_model.error_sources llamavoice/checkpoints/default --corpus /work/corpus

Each held-out test item has a recording of its sentence and a prompt clip of the same speaker. Whisper
transcribes four versions of it, so the gap between two rows is what one part of the model costs:

- ``reference``: the recording itself (the teachers' ceiling);
- ``vae``: the recording encoded and decoded by the VAE (posterior mean): the voice decoder's ceiling;
- ``lm teacher-forced``: the LM's prediction of every frame given the true frames before it, sampled at
  ``--temperature`` and decoded (what stage ``decoder_lm`` trains the decoder on);
- ``lm free-running``: the public API speaking the sentence, cloning the prompt clip, at the model's
  sampling defaults (what users hear).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from llamavoice.errors import LlamaVoiceError  # noqa: E402

SOURCES = ("reference", "vae", "lm teacher-forced", "lm free-running")
HELDOUT_SENTENCES = "manifest_heldout_sentences.jsonl"


def error_sources(model_dir: Path, items: list, temperature: float = 0.2, seed: int = 0,
                  max_prompt_seconds: float = 6.0) -> dict[str, tuple]:
    """Summed word and character error counts (``ErrorCounts``) per source over ``items`` (``EvalItem``s
    with a reference and a prompt): {source: (word counts, char counts)}."""
    import torch

    import llamavoice
    from llamavoice.audio import load_audio
    from llamavoice.data.dataset import collate
    from llamavoice.eval.metrics import AsrScorer, ErrorCounts, char_errors, word_errors

    tts = llamavoice.load(str(model_dir), device="cpu", dtype="fp32")
    model = tts.model
    sr = model.sample_rate
    asr = AsrScorer()
    torch.manual_seed(seed)
    totals = {source: (ErrorCounts(0, 0, 0, 0), ErrorCounts(0, 0, 0, 0)) for source in SOURCES}
    for item in items:
        audio, _ = load_audio(item.reference, sr)
        prompt, _ = load_audio(item.prompt, sr)
        batch = collate([{"text": torch.tensor(model.tokenizer.encode(item.text), dtype=torch.long),
                          "audio": torch.from_numpy(audio),
                          "prompt_audio": torch.from_numpy(prompt[: int(max_prompt_seconds * sr)].copy())}])
        with torch.no_grad():
            posteriors = model.posteriors(batch)
            vae = model.vae.decode(posteriors.mu).float()[0].numpy()
            forced = model.vae.decode(model.teacher_forced_latents(batch, temperature)).float()[0].numpy()
        free, _ = tts.synthesize(item.text, voice=str(item.prompt), seed=seed, progress=False)
        for source, heard in zip(SOURCES, (audio, vae, forced, free), strict=True):
            hypothesis = asr.transcribe(heard, sr)
            words, chars = totals[source]
            totals[source] = (words + word_errors(item.text, hypothesis), chars + char_errors(item.text, hypothesis))
    return totals


def markdown(totals: dict[str, tuple], n_items: int) -> str:
    lines = [f"| source ({n_items} items) | WER % | CER % | substitutions | deletions | insertions |",
             "| --- | --- | --- | --- | --- | --- |"]
    for source, (words, chars) in totals.items():
        lines.append(f"| {source} | {100 * words.rate:.1f} | {100 * chars.rate:.1f} | {words.substitutions} | "
                     f"{words.deletions} | {words.insertions} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--corpus", type=Path, required=True, help="corpus directory with the held-out manifests")
    parser.add_argument("--max-items", type=int, default=None, help="the first N distinct sentences (default: all)")
    parser.add_argument("--temperature", type=float, default=0.2, help="sampling of the teacher-forced LM")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import torch

        from llamavoice.eval.lists import eval_list_from_manifests, one_per_sentence

        torch.set_num_threads(1)
        items = eval_list_from_manifests([args.corpus / HELDOUT_SENTENCES])
        items = one_per_sentence(items)[: args.max_items]  # the items eval.py --voice reads
        totals = error_sources(args.model_dir, items, args.temperature, args.seed)
    except LlamaVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(totals, len(items)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
