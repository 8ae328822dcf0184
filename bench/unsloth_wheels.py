"""Build the wheels that carry Unsloth, the peer of issue #18, to the lent GPU machine, inside a call's 64 MiB.

The machine has no package registry, so Unsloth and what it needs beyond the image travel as wheels. As
published they do not fit: Unsloth's wheel is mostly its Studio web UI (``studio/``, ~25 of its 28 MB
compressed) and bitsandbytes ships one native library per CUDA and ROCm release (43 MB). Training needs
neither the UI nor the other releases' libraries, so those files are left out of rewritten wheels (their
RECORD lists what is left). Nothing else is changed. Run here, where pip can download:

    python3 bench/unsloth_wheels.py --out .bench/wheels-unsloth
then on the device machine: ``bash bench/gpu_suite.sh unsloth``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# Unsloth's own pins (transformers <= 5.17, trl <= 1.15, datasets < 5) against the image's torch 2.11 (CUDA 13.0)
# and transformers 5.17. dill and multiprocess come with the project's own wheels (.whl/).
PACKAGES = (
    "unsloth==2026.10.9",
    "unsloth_zoo==2026.10.9",
    "bitsandbytes==0.50.2",
    "trl==1.15.0",
    "datasets==4.8.5",
    "cut_cross_entropy==25.1.1",
    "torchao==0.17.0",
    "tyro==1.0.17",
    "docstring_parser==0.18.0",
    "typeguard==4.6.1",
    "shtab==1.13.0",
    "msgspec==0.23.0",
    "hf_transfer==0.1.9",
    "structlog==26.1.0",
    "json5==0.17.3",
    "nest_asyncio==1.6.0",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def left_out(name: str, cuda: str) -> bool:
    """Files that training on the lent machine never loads."""
    if name.startswith("studio/"):
        return True
    library = name.removeprefix("bitsandbytes/")
    return library.startswith("libbitsandbytes_") and library != f"libbitsandbytes_cuda{cuda}.so"


def trim(wheel: Path, out: Path, cuda: str) -> int:
    """Rewrite ``wheel`` into ``out`` without the files left out; how many were."""
    target = out / wheel.name
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as trimmed:
        everything = source.infolist()
        kept = [info for info in everything if not left_out(info.filename, cuda)]
        names = {info.filename for info in kept}
        for info in kept:
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "".join(f"{line}\n" for line in lines if line.split(",")[0] in names).encode()
            trimmed.writestr(info, data)
    return len(everything) - len(kept)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the wheels (made if missing)")
    parser.add_argument("--cuda", default="130", help="the CUDA release of the machine's torch, e.g. 130 for 13.0")
    parser.add_argument("--python", default="3.12", help="the machine's Python")
    options = parser.parse_args(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", download]
        target = ["--python-version", options.python, "--implementation", "cp", *platforms]
        subprocess.run([*pip, *target, *PACKAGES], check=True)
        for wheel in sorted(Path(download).glob("*.whl")):
            dropped = trim(wheel, options.out, options.cuda)
            size, published = (options.out / wheel.name).stat().st_size, wheel.stat().st_size
            trimmed = f" (published {published / 2**20:.1f} MiB; {dropped} files left out)" if dropped else ""
            print(f"{wheel.name}: {size / 2**20:.1f} MiB{trimmed}")


if __name__ == "__main__":
    main()
