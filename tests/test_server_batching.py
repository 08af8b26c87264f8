"""Continuous batching: rows that join and leave the decode loop between steps compute what they
compute alone; through the server, concurrent fixed-seed requests give the audio each gives alone,
and a client that disconnects mid-stream frees its row."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import torch
from conftest import SENTENCES, make_model, perturb_offset_bias, single_thread, synth_audio

from llamavoice.inference.api import TTS
from llamavoice.inference.continuous import ContinuousBatcher
from llamavoice.inference.generator import GenerationItem
from llamavoice.server.engine import BatchingEngine, RequestHandle


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def run_batcher(batcher: ContinuousBatcher, jobs: list, cancel: dict[int, int] | None = None) -> dict[int, list]:
    """Drive the batcher step by step: job k = (start step, item, sampling) is added at its start step;
    ``cancel`` maps a job to the step at which it is cancelled. Returns the kept groups per job."""
    out: dict[int, list] = {k: [] for k in range(len(jobs))}
    done: set[int] = set()
    cancel = cancel or {}
    n = 0
    while len(done) < len(jobs):
        for k, (start, item, cfg) in enumerate(jobs):
            if start == n:
                batcher.add(k, item, cfg)
            if cancel.get(k) == n:
                batcher.cancel(k)
                done.add(k)
        for o in batcher.step():
            if o.group is not None:
                out[o.ticket].append(o.group)
            if o.finished:
                done.add(o.ticket)
        n += 1
        assert n < 1000
    return out


@pytest.mark.parametrize("lm_options", [{"reduction_factor": 1}, {"reduction_factor": 2},
                                        {"reduction_factor": 2, "prenet_dim": 16, "align_layer": 1,
                                         "align_offset_range": 3}],
                         ids=["r1", "r2", "r2-alignment"])
def test_rows_joining_and_leaving_compute_what_they_compute_alone(tokenizer, lm_options):
    """Items arrive at different steps, with different voices, lengths, temperatures and guidance
    (two LM rows), and one is cancelled: every other item equals the one-item loop. With an
    alignment block, each row also carries its own text keys through every repack."""
    model = make_model(tokenizer, seed=lm_options["reduction_factor"], **lm_options)
    perturb_offset_bias(model)
    # fp32: under int8/bf16 the rounding of a reduced precision turns the 1e-7 differences that batch shapes make
    # (fp32 attention, matrix kernels) into ~1e-3 ones, so the bookkeeping is checked at full precision.
    tts = TTS(model, device="cpu", dtype="fp32")
    sr = tts.sample_rate
    voices = [tts.encode_voice(synth_audio(s, sr, seed), sample_rate=sr) for s, seed in ((4.0, 1), (5.5, 2))]
    base = tts.sampling
    configs = [base, base.replace(cfg_weight=1.5), base.replace(temperature=0.3, min_temperature=0.1), base]
    jobs = []
    for k, (text, start) in enumerate([(SENTENCES[0], 0), (SENTENCES[1], 0), ("Hi.", 3), (SENTENCES[3], 9),
                                       (SENTENCES[5], 20), (SENTENCES[6], 2)]):
        voice = voices[k % 2]
        item = GenerationItem(tokenizer.encode(text), voice.latents, 100 + k, 8, 40 + 6 * k,
                              prefix_store=voice.prefixes)
        jobs.append((start, item, configs[k % len(configs)]))
    got = run_batcher(ContinuousBatcher(tts.generator), jobs, cancel={5: 6})
    for k, (_, item, cfg) in enumerate(jobs[:5]):
        alone = tts.generator.generate([item], cfg)[0].u
        mine = torch.cat(got[k]) if got[k] else torch.zeros(0, alone.shape[1])
        assert mine.shape == alone.shape, (k, mine.shape, alone.shape)
        assert (mine - alone).abs().max() <= 1e-4
    assert len(got[5]) <= 6  # the cancelled item stopped producing


def test_engine_feeds_tts_stream_the_same_frames(server_tts):
    """TTS.stream with the engine as frame source = TTS.stream on its own (two sentences)."""
    engine = BatchingEngine(server_tts, max_rows=4, threads=1)
    engine.start()
    try:
        text = "Hello there. How are you today?"
        alone = np.concatenate(list(server_tts.stream(text, seed=4)))
        request = RequestHandle()
        batched = np.concatenate(list(server_tts.stream(text, seed=4, frame_source=engine.frame_source(request))))
    finally:
        engine.close()
    assert batched.shape == alone.shape
    assert np.abs(batched - alone).max() <= 1e-4


def pcm(url: str, text: str, seed: int, **extra) -> np.ndarray:
    resp = requests.post(f"{url}/v1/audio/speech", json={"input": text, "seed": seed, "response_format": "pcm",
                                                         **extra}, timeout=120)
    assert resp.status_code == 200, resp.text
    return np.frombuffer(resp.content, dtype="<i2").astype(np.int32)


def test_concurrent_fixed_seed_requests_equal_each_alone(live_server):
    a_text, b_text = " ".join(SENTENCES[:2]), SENTENCES[2]
    alone_a = pcm(live_server, a_text, 21)
    alone_b = pcm(live_server, b_text, 22, temperature=0.5)
    shared_before = requests.get(f"{live_server}/health").json()["shared_steps"]
    results: dict[str, np.ndarray] = {}
    start = threading.Barrier(2)

    def call(key: str, text: str, seed: int, **extra) -> None:
        start.wait()
        results[key] = pcm(live_server, text, seed, **extra)

    threads = [threading.Thread(target=call, args=("a", a_text, 21)),
               threading.Thread(target=call, args=("b", b_text, 22), kwargs={"temperature": 0.5})]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert requests.get(f"{live_server}/health").json()["shared_steps"] > shared_before  # they did share steps
    for key, alone in (("a", alone_a), ("b", alone_b)):
        assert results[key].shape == alone.shape
        assert np.abs(results[key] - alone).max() <= 3  # 16-bit steps: float rounding of the batched products


def test_disconnect_mid_stream_frees_the_slot(live_server):
    """A client that reads the first audio and hangs up: its request and its row are gone within a
    few decode steps, long before its text would have been spoken."""
    long_text = " ".join(SENTENCES * 10)  # at least ~70 s of speech (min 0.02 s per character)
    parsed = urlparse(live_server)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    conn.request("POST", "/v1/audio/speech", body=json.dumps({"input": long_text, "response_format": "pcm"}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert len(resp.read1(4096)) > 0  # audio is flowing
    health = requests.get(f"{live_server}/health").json()
    assert health["requests"] == 1 and health["rows"] == 1
    steps_at_close = health["steps"]
    conn.sock.shutdown(2)
    conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        health = requests.get(f"{live_server}/health").json()
        if health["requests"] == 0 and health["rows"] == 0 and health["sentences"] == 0:
            break
        time.sleep(0.02)
    assert health["requests"] == 0 and health["rows"] == 0 and health["sentences"] == 0, health
    min_steps = len(long_text) * 0.02 * 25  # the shortest this text could have been
    assert health["steps"] - steps_at_close < min_steps / 4
    # The server still serves.
    assert pcm(live_server, "Still here.", 1).size > 0
