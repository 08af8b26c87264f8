"""Measure how distinct the speakers of a corpus are (Resemblyzer d-vectors, pairwise cosine).

A synthetic corpus can only claim N speakers if N voices actually sound different. For each speaker
we embed a few utterances with Resemblyzer's pretrained speaker encoder, average them into one
unit-norm speaker embedding, and compare every pair by cosine similarity (same voice ~0.9,
different voices ~0.5-0.6 with this encoder). Pairs at or above ``--threshold`` (default 0.8) are
not distinct: the greedy pass keeps speakers in priority order and drops any speaker too close to
one already kept, naming which one.

Also reports each speaker's self-similarity (cosine between the means of two disjoint halves of its
utterances), a sanity check that the embedding is stable for one voice.

Run on any corpus laid out as ``<dir>/wavs/<speaker>/*.wav``::

    python -m recipes.data.speaker_similarity /work/corpus --per-speaker 8

Needs ``pip install resemblyzer`` and then ``pip uninstall webrtcvad; pip install webrtcvad-wheels``
(resemblyzer's webrtcvad imports ``pkg_resources``, missing on new setuptools).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llamavoice.errors import AudioError

DEFAULT_THRESHOLD = 0.8


class SimilarityError(AudioError):
    """The corpus or the encoder is not usable for the measurement."""


def list_speaker_files(corpus_dir: Path, per_speaker: int = 8, seed: int = 0) -> dict[str, list[Path]]:
    """Pick up to ``per_speaker`` wavs per speaker directory under ``corpus_dir/wavs`` (seeded)."""
    root = Path(corpus_dir) / "wavs"
    if not root.is_dir():
        raise SimilarityError(f"{root} does not exist: expected <corpus>/wavs/<speaker>/*.wav")
    out: dict[str, list[Path]] = {}
    for spk_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(spk_dir.glob("*.wav"))
        if not files:
            continue
        rng = random.Random(f"{seed}:{spk_dir.name}")
        out[spk_dir.name] = sorted(rng.sample(files, min(per_speaker, len(files))))
    if not out:
        raise SimilarityError(f"no wav files under {root}/<speaker>/")
    return out


def _load_16k(path: Path) -> np.ndarray:
    from math import gcd

    import soundfile as sf
    from scipy.signal import resample_poly

    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wav = wav.mean(axis=1)
    if sr != 16000:
        g = gcd(int(sr), 16000)
        wav = resample_poly(wav, 16000 // g, int(sr) // g).astype(np.float32)
    return wav


def load_encoder():
    """Resemblyzer's VoiceEncoder on CPU, with a message saying what to install if it fails."""
    try:
        from resemblyzer import VoiceEncoder
    except Exception as e:  # ImportError, or pkg_resources missing inside webrtcvad
        raise SimilarityError(
            f"cannot import resemblyzer ({e}); run: pip install resemblyzer && pip uninstall -y webrtcvad "
            "&& pip install webrtcvad-wheels") from e
    return VoiceEncoder(device="cpu", verbose=False)


def embed_utterances(files: Sequence[Path], encoder=None) -> np.ndarray:
    """One unit-norm 256-d embedding per file, shape (len(files), 256)."""
    from resemblyzer import preprocess_wav

    encoder = encoder or load_encoder()
    embs = []
    for f in files:
        wav = preprocess_wav(_load_16k(Path(f)))
        if len(wav) < 1600:
            raise SimilarityError(f"{f}: less than 0.1 s of speech after VAD; cannot embed")
        embs.append(encoder.embed_utterance(wav))
    return np.stack(embs).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def speaker_embeddings(files_by_speaker: dict[str, Sequence[Path]], encoder=None,
                       progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Mean embedding per speaker and each speaker's split-half self-similarity (nan if < 2 files)."""
    encoder = encoder or load_encoder()
    means: dict[str, np.ndarray] = {}
    self_sim: dict[str, float] = {}
    items = list(files_by_speaker.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="embedding speakers", unit="spk")
    for spk, files in items:
        e = embed_utterances(files, encoder)
        means[spk] = _unit(e.mean(axis=0))
        if len(e) >= 2:
            half = len(e) // 2
            self_sim[spk] = float(_unit(e[:half].mean(0)) @ _unit(e[half:].mean(0)))
        else:
            self_sim[spk] = float("nan")
    return means, self_sim


def similarity_matrix(means: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    names = list(means)
    m = np.stack([means[n] for n in names])
    return names, (m @ m.T).astype(np.float64)


def select_distinct(names: Sequence[str], sim: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                    priority: Sequence[str] | None = None) -> tuple[list[str], list[dict]]:
    """Greedy: walk speakers in ``priority`` order (default: ``names``), keep one if its cosine to
    every kept speaker is below ``threshold``. Returns (kept, dropped) where each dropped entry says
    which kept speaker it was too close to."""
    index = {n: i for i, n in enumerate(names)}
    first = [n for n in (priority or names) if n in index]
    order = first + [n for n in names if n not in first]
    kept: list[str] = []
    dropped: list[dict] = []
    for n in order:
        closest = max(kept, key=lambda k: sim[index[n], index[k]], default=None)
        if closest is not None and sim[index[n], index[closest]] >= threshold:
            dropped.append({"speaker": n, "too_close_to": closest,
                            "cosine": round(float(sim[index[n], index[closest]]), 4)})
        else:
            kept.append(n)
    return kept, dropped


def pair_summary(names: Sequence[str], sim: np.ndarray) -> dict:
    """min/max/mean of the off-diagonal cosines and the closest pair."""
    iu = np.triu_indices(len(names), k=1)
    vals = sim[iu]
    if vals.size == 0:
        return {"pairs": 0}
    k = int(np.argmax(vals))
    return {"pairs": int(vals.size), "min": round(float(vals.min()), 4), "max": round(float(vals.max()), 4),
            "mean": round(float(vals.mean()), 4),
            "closest_pair": [names[iu[0][k]], names[iu[1][k]]]}


def plot_matrix(names: Sequence[str], sim: np.ndarray, path: Path, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * n, 0.6 + 0.45 * n), dpi=80)
    im = ax.imshow(sim, vmin=0.3, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), names, rotation=70, fontsize=8, ha="right")
    ax.set_yticks(range(n), names, fontsize=8)
    for i in range(n):
        for j in range(n):
            if i != j:
                color = "red" if sim[i, j] >= threshold else "white"
                ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6, color=color)
    ax.set_title(f"speaker cosine (Resemblyzer); red >= {threshold}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def measure(files_by_speaker: dict[str, Sequence[Path]], out_dir: Path | None = None,
            threshold: float = DEFAULT_THRESHOLD, priority: Sequence[str] | None = None,
            progress: bool = False, encoder=None, name: str = "similarity") -> dict:
    """Embed, compare, select; write ``<name>.json`` and ``<name>.png`` into ``out_dir`` if given."""
    means, self_sim = speaker_embeddings(files_by_speaker, encoder=encoder, progress=progress)
    names, sim = similarity_matrix(means)
    kept, dropped = select_distinct(names, sim, threshold, priority)
    ki = [names.index(k) for k in kept]
    report = {
        "encoder": "resemblyzer VoiceEncoder (pretrained.pt), mean of utterance d-vectors",
        "threshold": threshold,
        "utterances_per_speaker": {s: len(f) for s, f in files_by_speaker.items()},
        "speakers": names,
        "matrix": [[round(float(x), 4) for x in row] for row in sim],
        "self_similarity": {s: round(v, 4) for s, v in self_sim.items()},
        "all_pairs": pair_summary(names, sim),
        "kept": kept,
        "dropped": dropped,
        "kept_pairs": pair_summary(kept, sim[np.ix_(ki, ki)]),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1))
        try:
            plot_matrix(names, sim, out_dir / f"{name}.png", threshold)
        except ImportError:
            print(f"matplotlib not installed: {name}.png not written")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path, help="corpus directory containing wavs/<speaker>/*.wav")
    ap.add_argument("--per-speaker", type=int, default=8, help="utterances embedded per speaker")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                    help="cosine at or above which two speakers are not distinct")
    ap.add_argument("--out", type=Path, default=None, help="where to write similarity.json/png "
                    "(default: the corpus directory)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        files = list_speaker_files(args.corpus, args.per_speaker, args.seed)
        rep = measure(files, args.out or args.corpus, args.threshold, progress=True)
    except SimilarityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    p = rep["all_pairs"]
    print(f"{len(rep['speakers'])} speakers, {p.get('pairs', 0)} pairs: min {p.get('min')} "
          f"mean {p.get('mean')} max {p.get('max')} ({p.get('closest_pair')})")
    for d in rep["dropped"]:
        print(f"not distinct: {d['speaker']} ~ {d['too_close_to']} (cos {d['cosine']})")
    print(f"distinct speakers at < {args.threshold}: {len(rep['kept'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
