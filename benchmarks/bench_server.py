#!/usr/bin/env python
"""Speech server under concurrent streaming clients: continuous batching vs one request at a time.

    python benchmarks/bench_server.py                          # shipped default model, CPU, 1 thread
    python benchmarks/bench_server.py --clients 1,4,8 --rounds 1 --seconds 2
    python benchmarks/bench_server.py --model DIR --device cuda --threads 4

Two servers run in this process on loopback over the same loaded model: one with the
continuous-batching decode loop (``llamavoice serve``), one serving one request at a time
(``--no-batching``, what the other OpenAI-compatible TTS servers do). For each number of
concurrent clients both are measured, alternating, so machine load hits both alike. Every client
sends ``--rounds`` streaming requests one after the other (response_format pcm, read as it comes).
Every request is forced to ``--seconds`` of audio (the stop head and stall guard are off), so the
work per request is the same whatever the model says.

``--components`` instead measures what one second of audio of one stream costs, in-process, without
HTTP: the LM through ``ContinuousBatcher`` at batch 1/4/8/16 (step time x frames per second /
batch), and the streaming VAE decoder (``StreamingDecoder``, chunks growing to 16 or to 64 frames),
plus 8 decoder windows decoded as one batch vs one by one.

Reported per scenario:
- TTFA p50/p95: request sent -> first audio bytes received;
- per-stream RTF p50/max: a request's wall time / its audio seconds (max < 1: every stream was
  faster than real time);
- aggregate: audio seconds delivered / wall seconds of the scenario;
- the count of requests (bounded: clients x rounds, and no new request after --max-wall seconds).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")
warnings.filterwarnings("ignore", message=r".*weight_norm.*deprecated")

TEXT = "The birch canoe slid on the smooth planks, and the boy glued the sheet to the dark blue background."


@contextmanager
def serve(app):  # noqa: ANN001, ANN201
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


def one_request(port: int, body: bytes, sample_rate: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/audio/speech", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    first, size = None, 0
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        if first is None:
            first = time.perf_counter() - t0
        size += len(chunk)
    total = time.perf_counter() - t0
    conn.close()
    audio = size / 2 / sample_rate
    return {"ttfa": first, "wall": total, "audio": audio, "start": t0, "end": t0 + total}


def scenario(port: int, clients: int, rounds: int, seconds: float, max_wall: float, sample_rate: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)
    deadline = time.perf_counter() + max_wall

    def client(k: int) -> None:
        barrier.wait()
        for r in range(rounds):
            if time.perf_counter() > deadline:
                return
            body = json.dumps({"input": TEXT, "response_format": "pcm", "seed": 1000 * k + r}).encode()
            out = one_request(port, body, sample_rate)
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    ttfa = sorted(r["ttfa"] for r in results)
    rtf = sorted(r["wall"] / r["audio"] for r in results)
    short = [r["audio"] for r in results if abs(r["audio"] - seconds) > 0.05]
    if short:
        raise RuntimeError(f"requests were not forced to {seconds} s: {short[:3]}")
    return {
        "clients": clients, "requests": len(results),
        "ttfa_p50_ms": 1000 * quantile(ttfa, 0.5), "ttfa_p95_ms": 1000 * quantile(ttfa, 0.95),
        "rtf_p50": quantile(rtf, 0.5), "rtf_max": rtf[-1],
        "aggregate_audio_s_per_s": sum(r["audio"] for r in results) / wall, "wall_s": wall,
    }


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def components(tts, text: str, seconds: float) -> None:  # noqa: ANN001
    """Per-stream cost of one second of audio: batched LM steps, and streaming VAE decoding."""
    import torch

    from llamavoice.inference.continuous import ContinuousBatcher
    from llamavoice.inference.streaming import StreamingDecoder

    cfg = tts.sampling
    voice = tts.get_voice(None)
    job = tts._jobs([text], [voice], [0], cfg)[0]
    for batch in (1, 4, 8, 16):
        batcher = ContinuousBatcher(tts.generator)
        for k in range(batch):
            item = tts._items(job, cfg)[0]
            item.seed = k
            batcher.add(k, item, cfg)
        batcher.step()  # admission and prefill
        t0, steps = time.perf_counter(), 0
        while batcher.step():
            steps += 1
        step = (time.perf_counter() - t0) / steps
        print(f"LM batch {batch:2d}: step {1000 * step:5.1f} ms = {1000 * step * tts.frame_rate / batch:4.0f} ms "
              "per stream per audio second", flush=True)
    frames = int(seconds * tts.frame_rate)
    z = torch.randn(frames, tts.model.config.vae.latent_dim)
    for max_chunk in (16, 64):
        t0 = time.perf_counter()
        decoder = StreamingDecoder(tts._vae_decode, tts.samples_per_frame, tts.context, 4, max_chunk)
        for i in range(0, frames, 4):  # frames arrive 4 at a time, through the flow, as in TTS.stream
            decoder.push(tts.generator.to_vae_latents([z[i : i + 4]])[0])
        decoder.finish()
        print(f"streaming decode (chunks up to {max_chunk}): "
              f"{1000 * (time.perf_counter() - t0) / seconds:4.0f} ms per audio second", flush=True)
    window = torch.randn(8, 16 + 2 * tts.context, z.shape[1])
    with torch.inference_mode():
        t0 = time.perf_counter()
        tts.model.vae.decode(window)
        together = time.perf_counter() - t0
        t0 = time.perf_counter()
        for row in window:
            tts.model.vae.decode(row[None])
        apart = time.perf_counter() - t0
    print(f"8 decoder windows of {window.shape[1]} frames: one batch {1000 * together:.0f} ms, one by one "
          f"{1000 * apart:.0f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (1 on a busy CPU)")
    parser.add_argument("--clients", default="1,4,8,16", help="comma-separated concurrency levels")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--seconds", type=float, default=3.0, help="audio per request (forced length)")
    parser.add_argument("--max-wall", type=float, default=240.0, help="no new request after this many s per run")
    parser.add_argument("--max-batch", type=int, default=16, help="LM rows per step of the batching server")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--components", action="store_true", help="per-stream costs without HTTP (see above)")
    args = parser.parse_args()

    import os
    import tempfile

    import torch

    from llamavoice.inference.api import load
    from llamavoice.server.app import ServerSettings, create_app

    torch.set_num_threads(args.threads)
    tts = load(args.model, device=args.device, dtype=args.dtype)
    # Forced length: never stop early, so every request is exactly --seconds of audio.
    tts.sampling = tts.sampling.replace(stop_threshold=2.0, stall_action="off", max_seconds=args.seconds,
                                        min_seconds_per_char=0.0)
    if args.components:
        print(f"load average {os.getloadavg()[0]:.1f}")
        components(tts, TEXT, args.seconds)
        return
    levels = [int(x) for x in args.clients.split(",")]
    library = Path(tempfile.mkdtemp(prefix="bench-server-voices-"))  # empty: only the model's voices
    common = dict(threads=args.threads, max_requests=max(levels) * 2, voices_dir=library)
    batched = create_app(tts, ServerSettings(batching=True, max_batch=args.max_batch, **common))
    serial = create_app(tts, ServerSettings(batching=False, **common))
    print(f"model: {tts.model_dir} ({args.device}, {args.dtype}, {args.threads} thread(s)); "
          f"{args.seconds:g} s of audio per request; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    with serve(batched) as port_b, serve(serial) as port_s:
        for port in (port_b, port_s):  # warm-up: voice prefix cache, allocations
            one_request(port, json.dumps({"input": TEXT, "response_format": "pcm"}).encode(), tts.sample_rate)
        for n in levels:
            for name, port in (("batched", port_b), ("one-at-a-time", port_s)):
                row = {"server": name, **scenario(port, n, args.rounds, args.seconds, args.max_wall,
                                                  tts.sample_rate), "load": os.getloadavg()[0]}
                rows.append(row)
                print(f"{name:14s} clients {n:2d}  requests {row['requests']:3d}  "
                      f"ttfa p50 {row['ttfa_p50_ms']:7.0f} ms  p95 {row['ttfa_p95_ms']:7.0f} ms  "
                      f"rtf p50 {row['rtf_p50']:5.2f}  max {row['rtf_max']:5.2f}  "
                      f"aggregate {row['aggregate_audio_s_per_s']:5.2f} audio-s/s  load {row['load']:.1f}",
                      flush=True)
    idle = next(r["ttfa_p50_ms"] for r in rows if r["server"] == "batched" and r["clients"] == min(levels))
    print(f"\nidle TTFA (batched, {min(levels)} client): {idle:.0f} ms")
    for n in levels:
        b = next(r for r in rows if r["server"] == "batched" and r["clients"] == n)
        s = next(r for r in rows if r["server"] == "one-at-a-time" and r["clients"] == n)
        print(f"clients {n:2d}: batched aggregate {b['aggregate_audio_s_per_s'] / s['aggregate_audio_s_per_s']:.2f}x "
              f"one-at-a-time; batched p95 TTFA = {b['ttfa_p95_ms'] / idle:.2f}x idle "
              f"(one-at-a-time {s['ttfa_p95_ms'] / idle:.2f}x); every batched stream faster than real time: "
              f"{'yes' if b['rtf_max'] < 1 else 'no'} (max RTF {b['rtf_max']:.2f})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
