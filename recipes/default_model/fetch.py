"""Bring what a device call returned into this checkout (runs here).

    python -m recipes.default_model.fetch FILES_AT [--dest llamavoice/checkpoints/default] [--stash]

* reassembles ``kit.json`` + ``kit.partNN`` (every checksum verified) into ``runs/device/kit``;
* unpacks ``logs.tar.gz`` into ``runs/device/logs`` and prints the state;
* a finished export is installed into ``--dest`` and verified the way users load it
  (``llamavoice.load`` + one sentence with the default voice); ``--reencode-voices CORPUS``
  first re-encodes the default voices from the lossless corpus clips here;
* ``--stash`` keeps the kit and state in ``.devstate/`` so that, carried to a fresh machine after
  a lost lease, the next device call continues from them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path

from llamavoice.errors import CheckpointError, LlamaVoiceError
from recipes.default_model.kit import encode_default_voices, join_kit, read_kit_info, verify_model


def install(kit: Path, dest: Path) -> Path:
    """Replace ``dest`` by the kit directory (through a sibling temp dir: never half-installed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".installing")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(kit, tmp)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def fetch(files_at: Path, dest: Path | None, work: Path, stash: Path | None = None, reencode_voices: Path | None = None,
          device: str = "cpu", allow_partial: bool = False, max_seconds: float | None = None) -> dict:
    files_at = Path(files_at)
    if not files_at.is_dir():
        raise CheckpointError(f"{files_at} is not a folder: pass the folder the device call's files landed in")
    report: dict = {}
    state_path = files_at / "state.json"
    if state_path.is_file():
        report["state"] = json.loads(state_path.read_text())
    if (files_at / "logs.tar.gz").is_file():
        logs = work / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        with tarfile.open(files_at / "logs.tar.gz") as tar:
            tar.extractall(logs, filter="data")
        report["logs"] = str(logs)
    if not (files_at / "kit.json").is_file():
        report["kit"] = None
        return report
    kit = work / "kit"
    record = join_kit(files_at / "kit.json", kit)
    info = read_kit_info(kit)
    report["kit"] = {"dir": str(kit), "info": info, "mib": round(record["size"] / 2**20, 2)}
    if stash is not None:
        stash.mkdir(parents=True, exist_ok=True)
        if state_path.is_file():
            shutil.copyfile(state_path, stash / "state.json")
        shutil.rmtree(stash / "kit", ignore_errors=True)
        shutil.copytree(kit, stash / "kit")
        report["stashed"] = str(stash)
    complete = info.get("kind") == "export" or (allow_partial and info.get("tensors") == "all")
    if dest is not None and complete:
        install(kit, dest)
        if reencode_voices is not None:
            report["voices"] = encode_default_voices(dest, reencode_voices, device=device)
        report["installed"] = str(dest)
        report["verify"] = verify_model(dest, device=device, wav_out=work / "verify.wav", max_seconds=max_seconds)
    elif dest is not None:
        report["installed"] = None
        report["why_not_installed"] = (f"the kit holds stage {info.get('stage')} weights ({info.get('tensors')}), "
                                       "not an export; pass --allow-partial to install a full-model stage kit")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.default_model.fetch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files_at", type=Path, help="folder with the call's files (kit.json, kit.partNN, state.json...)")
    ap.add_argument("--dest", type=Path, default=Path("llamavoice/checkpoints/default"))
    ap.add_argument("--no-install", action="store_true", help="only reassemble and verify the checksums")
    ap.add_argument("--work", type=Path, default=Path("runs/device"), help="where the kit and logs are unpacked")
    ap.add_argument("--stash", nargs="?", const=Path(".devstate"), type=Path, default=None,
                    help="also keep kit + state for a continuation on a fresh machine (default .devstate)")
    ap.add_argument("--reencode-voices", type=Path, default=None, metavar="CORPUS",
                    help="re-encode the default voices from this corpus's original (lossless) clips")
    ap.add_argument("--allow-partial", action="store_true", help="install a full-model stage kit (no voices)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-seconds", type=float, default=None, help="cap of the check sentence's length")
    args = ap.parse_args(argv)
    try:
        report = fetch(args.files_at, None if args.no_install else args.dest, args.work, args.stash,
                       args.reencode_voices, args.device, args.allow_partial, args.max_seconds)
    except LlamaVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = report.pop("state", None)
    if state:
        for name, st in state.get("stages", {}).items():
            print(f"{name}: {st.get('status')}, step {st.get('step_offset', 0) + st.get('step', 0)}, "
                  f"{st.get('seconds', 0):.0f} s, rate {st.get('rate', '?')}/s, last {st.get('last', {}).get('total')}")
        print(f"export: {state.get('export')}")
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
