"""Peak memory of decoding a long latent sequence: one VAE pass vs. the windowed decode.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_decode_memory --minutes 1 2 4

Each measurement runs in a fresh process (peak RSS, ``ru_maxrss``) on the default model with
random latents. The windowed decode (``TTS.decode_stream``, what ``llamavoice decode`` uses)
should stay flat as the length grows; the one pass grows with it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
import llamavoice
mode, minutes = sys.argv[1], float(sys.argv[2])
tts = llamavoice.load(None, device="cpu")
frames = int(minutes * 60 * tts.frame_rate)
z = np.random.default_rng(0).standard_normal((frames, tts.model.config.vae.latent_dim)).astype(np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode == "one-pass":
    with torch.inference_mode():
        n = tts.model.vae.decode(torch.from_numpy(z)[None])[0].shape[0]
else:
    n = sum(piece.shape[0] for piece in tts.decode_stream(z))  # written out piece by piece, as the CLI does
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "minutes": minutes, "samples": n, "seconds": time.perf_counter() - start,
                  "peak_mb": peak / 1024, "model_mb": base / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    args = parser.parse_args()
    print(f"{'mode':10s} {'minutes':>7s} {'peak MB':>8s} {'after load MB':>13s} {'decode s':>8s}")
    for minutes in args.minutes:
        for mode in ("one-pass", "windowed"):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(minutes)], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{mode:10s} {minutes:7.1f} failed after {time.perf_counter() - t:.0f} s: "
                      f"{out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{mode:10s} {minutes:7.1f} {r['peak_mb']:8.0f} {r['model_mb']:13.0f} {r['seconds']:8.1f}")


if __name__ == "__main__":
    main()
