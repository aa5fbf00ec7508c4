"""Images for task=vision: builtin:fashion-mnist, builtin:digits and a user's folder of images per class.

Prepared shards hold each image as image_size x image_size x channels uint8 pixels (row-major, channels
last) where text shards hold token ids: the same memory-mapped files, index, streaming and exact resume.
A "pixels" tokenizer stands where a text tokenizer would (256 values, no special ids).

    builtin:fashion-mnist   the 60k/10k IDX files of the Debian package dataset-fashion-mnist; where it is
                            not installed, `apt-get download` fetches it (no root: the private apt lists of
                            builtin:debian-descriptions) and it is unpacked into the bigbatch cache
    builtin:digits          scikit-learn's bundled 1,797 8x8 digits (pip install scikit-learn)
    DIR                     DIR/CLASS/*.png|jpg|...: one sub-folder per class; or DIR/{train,valid,test}/CLASS/...
                            for fixed splits. Any size and mode (Pillow), resized on the shorter side to
                            model.image_size and centre-cropped
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from bigbatch.errors import UserError

FIXED_SPLIT = "_split"  # record key: the split a builder fixed (fashion-mnist's own test set, a train/ folder)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_SPLIT_DIRS = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "dev": "valid",
               "test": "test"}
# (image_size, channels, augment) a builtin comes with
BUILTIN_IMAGES = {"fashion-mnist": (28, 1, "crop_flip"), "digits": (8, 1, "crop")}


class PixelTokenizer:
    """Pixel values 0..255 are the ids of an image's "tokens"; no special ids."""

    kind = "pixels"
    vocab_size = 256
    eos_id = pad_id = bos_id = None

    def save(self, directory: Path) -> None:
        """Nothing to save."""

    def describe(self) -> dict:
        return {"kind": "pixels", "vocab_size": self.vocab_size}


# --------------------------------------------------------------------------- fashion-mnist


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, optionally .gz): big-endian magic 0 0 type ndim, ndim big-endian
    uint32 sizes, then the values. Only unsigned bytes (type 0x08) occur in these data sets."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot be read as an IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex() or 'missing'})")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    start, n = 4 + 4 * ndim, int(np.prod(dims)) if dims else 0
    if len(data) != start + n:
        raise UserError(f"{path}: IDX header says {dims} = {n:,} bytes, the file holds {len(data) - start:,}")
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(dims)


def _cache_dir() -> Path:
    from bigbatch.data.prepare import cache_root

    return cache_root() / "debs" / FASHION_PACKAGE / "usr" / "share" / "datasets" / "fashion-mnist"


def fashion_mnist_dir(fetch: bool = True) -> Path:
    """Where the four IDX files are: the installed package, else the cache (fetched into it once)."""
    for d in (FASHION_SYSTEM_DIR, _cache_dir()):
        if (d / "train-images-idx3-ubyte.gz").exists() and (d / "t10k-labels-idx1-ubyte.gz").exists():
            return d
    if not fetch:
        raise UserError(f"builtin:fashion-mnist: not in {FASHION_SYSTEM_DIR} nor {_cache_dir()}")
    _fetch_package()
    return fashion_mnist_dir(fetch=False)


def _fetch_package() -> None:
    """apt-get download the .deb (no root: the private lists of builtin:debian-descriptions) and unpack it."""
    from bigbatch.data.debian import _lists_dir, _update, private_apt_options

    how = (f"install it with `apt-get install {FASHION_PACKAGE}` (files in {FASHION_SYSTEM_DIR}) or unpack its .deb "
           f"with `dpkg-deb -x` into {_cache_dir().parents[3]}")
    apt_get, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt_get is None or dpkg_deb is None:
        raise UserError(f"builtin:fashion-mnist: no apt-get / dpkg-deb here to fetch the data; {how}")
    lists = _lists_dir()
    if not list(lists.glob("*_Packages*")):
        _update(lists)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([apt_get, *private_apt_options(lists), "-qq", "download", FASHION_PACKAGE], cwd=tmp,
                              capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not debs:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no .deb was fetched"]
            raise UserError(f"builtin:fashion-mnist: `apt-get download {FASHION_PACKAGE}` failed ({tail[0]}); {how}")
        root = _cache_dir().parents[3]  # .../debs/dataset-fashion-mnist
        root.parent.mkdir(parents=True, exist_ok=True)
        unpack = Path(tempfile.mkdtemp(dir=root.parent, prefix=".unpack-"))
        proc = subprocess.run([dpkg_deb, "-x", str(debs[0]), str(unpack)], capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(unpack, ignore_errors=True)
            raise UserError(f"builtin:fashion-mnist: `dpkg-deb -x {debs[0].name}` failed ({proc.stderr.strip()}); {how}")
        shutil.rmtree(root, ignore_errors=True)
        unpack.rename(root)  # whole or not at all: a kill mid-unpack leaves only the temporary directory


def fashion_mnist(task: str) -> Iterator[tuple[str, dict]]:
    """The 60k training images (5% held out by hash for valid) and the 10k official test images."""
    from bigbatch.data.builtin import split_of

    _need_vision(task, "fashion-mnist")
    d = fashion_mnist_dir()
    for prefix, split in (("train", None), ("t10k", "test")):
        images = read_idx(d / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(d / f"{prefix}-labels-idx1-ubyte.gz")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or labels.max(initial=0) >= 10:
            raise UserError(f"{d}/{prefix}-*: {images.shape} images and {labels.shape} labels do not match")
        for i in range(len(images)):
            key = f"fashion-mnist/{prefix}/{i}"
            yield key, {"pixels": images[i], "label": FASHION_LABELS[labels[i]],
                        FIXED_SPLIT: split or split_of(key, valid=0.05, test=0.0)}


def fashion_mnist_fingerprint() -> list:
    from bigbatch.data.sources import fingerprint_files

    d = fashion_mnist_dir()
    return fingerprint_files(sorted(d.glob("*-ubyte.gz")))


# --------------------------------------------------------------------------- digits


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("builtin:digits needs scikit-learn (pip install scikit-learn)") from None
    return load_digits()


def digits(task: str) -> Iterator[tuple[str, dict]]:
    """scikit-learn's 8x8 digits (values 0..16, scaled to 0..255); 10% valid, 20% test by hash."""
    from bigbatch.data.builtin import split_of

    _need_vision(task, "digits")
    data = _load_digits()
    pixels = np.rint(data.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, data.target)):
        key = f"digits/{i}"
        yield key, {"pixels": image, "label": str(int(label)), FIXED_SPLIT: split_of(key, valid=0.1, test=0.2)}


def digits_fingerprint() -> list:
    import sklearn

    return ["sklearn", sklearn.__version__] if _load_digits() is not None else []


def _need_vision(task: str, name: str) -> None:
    if task != "vision":
        raise UserError(f"builtin:{name} is an image data set; set task=vision (got {task})")


# --------------------------------------------------------------------------- a folder of images


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def image_folder(source: str, skip_bad: bool, bad) -> Iterator[tuple[str, dict]]:
    """(key, {"path", "label"[, split]}) of DIR/CLASS/* (or DIR/{train,valid,test}/CLASS/*), sorted.

    Files that are not images by their suffix are ignored; an empty class folder is an error (or skipped and
    counted with data.skip_bad_rows)."""
    root = Path(source).expanduser()
    if not root.is_dir():
        raise UserError(f"data.source={source!r}: task=vision reads a directory with one sub-folder of images per "
                        "class (or builtin:fashion-mnist / builtin:digits)")
    for cls, split, files in class_folders(source, is_image, "IMAGE.png"):
        if not files:
            bad.add(str(cls), f"no images (files ending {', '.join(sorted(IMAGE_SUFFIXES)[:4])}, ...)", skip_bad)
            continue
        for f in files:
            key = str(f.relative_to(Path(source).expanduser()))
            yield key, {"path": str(f), "label": cls.name, FIXED_SPLIT: split(key)}


def class_folders(source: str, wanted, example: str):
    """(class folder, split of a key, sorted files) of DIR/CLASS/ or DIR/{train,valid,test}/CLASS/ (hidden
    files and folders skipped). Without split folders every file's split is its key's hash (90/5/5); with
    train/ and test/ but no valid/ folder, 5% of train is held out for validation by hash."""
    from bigbatch.data.builtin import split_of

    root = Path(source).expanduser()
    if not root.is_dir():
        raise UserError(f"data.source={source!r}: expected a directory with one sub-folder per class "
                        f"({root}/CLASS/{example})")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise UserError(f"{root}: no class sub-folders (expected {root}/CLASS/{example}, one folder per class)")
    split_dirs = [p for p in subdirs if p.name.lower() in _SPLIT_DIRS]
    if split_dirs and len(split_dirs) != len(subdirs):
        others = [p.name for p in subdirs if p not in split_dirs]
        raise UserError(f"{root}: holds split folders ({', '.join(p.name for p in split_dirs)}) and other folders "
                        f"({', '.join(others[:3])}); use DIR/CLASS/... or DIR/{{train,valid,test}}/CLASS/..., not both")
    has_valid = any(_SPLIT_DIRS[p.name.lower()] == "valid" for p in split_dirs)
    tops = [(p, _SPLIT_DIRS[p.name.lower()]) for p in split_dirs] or [(root, None)]
    for top, fixed in tops:
        if fixed is None:
            split = split_of
        elif fixed == "train" and not has_valid:
            split = lambda key: split_of(key, valid=0.05, test=0.0)  # noqa: E731
        else:
            split = lambda key, fixed=fixed: fixed  # noqa: E731
        classes = sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise UserError(f"{top}: no class sub-folders (expected {top}/CLASS/{example})")
        for cls in classes:
            files = sorted(f for f in cls.rglob("*") if f.is_file() and wanted(f)
                           and not any(part.startswith(".") for part in f.relative_to(cls).parts))
            yield cls, split, files


# --------------------------------------------------------------------------- augmentation


def augment_batch(pixels: np.ndarray, rng: np.random.Generator, mode: str) -> np.ndarray:
    """Random crop of each image zero-padded by size / 8 pixels on every side (crop), and a horizontal flip
    of half of them (crop_flip): the usual augmentation of small images (CIFAR, Fashion-MNIST).
    pixels (B, H, W, C) uint8 -> a new array of the same shape."""
    if mode == "none":
        return pixels
    if mode not in ("crop", "crop_flip"):
        raise UserError(f"data.augment={mode}: expected none, crop or crop_flip")
    b, h, w, c = pixels.shape
    pad = max(1, min(h, w) // 8)
    padded = np.zeros((b, h + 2 * pad, w + 2 * pad, c), dtype=pixels.dtype)
    padded[:, pad : pad + h, pad : pad + w] = pixels
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, b))
    rows = (dy[:, None] + np.arange(h))[:, :, None]
    cols = (dx[:, None] + np.arange(w))[:, None, :]
    out = padded[np.arange(b)[:, None, None], rows, cols]
    if mode == "crop_flip":
        flip = rng.random(b) < 0.5
        out[flip] = out[flip, :, ::-1]
    return out


# --------------------------------------------------------------------------- decoding


def to_pixels(record: dict, size: int, channels: int) -> np.ndarray:
    """A record's image as (size, size, channels) uint8: decoded (a "path") or given ("pixels" (H, W[, C])),
    resized on its shorter side and centre-cropped. ValueError saying why when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    if "pixels" in record:
        arr = np.asarray(record["pixels"], dtype=np.uint8)
        if arr.shape[:2] == (size, size) and (arr.ndim == 2 and channels == 1 or arr.ndim == 3 and arr.shape[2] == channels):
            return arr.reshape(size, size, channels)
        image = Image.fromarray(arr)
    else:
        try:
            with Image.open(record["path"]) as im:
                im.load()
                image = im.copy()
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"not a readable image ({type(e).__name__}: {str(e)[:100]})") from None
    image = image.convert("L" if channels == 1 else "RGB")
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC if min(w, h) < size else Image.Resampling.LANCZOS)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.array(image, dtype=np.uint8).reshape(size, size, channels)  # a writable copy (torch.from_numpy)


def load_image_file(path: str | Path, size: int, channels: int) -> np.ndarray:
    """An image file for prediction (bigbatch classify): (size, size, channels) uint8, or one line naming it."""
    try:
        return to_pixels({"path": str(path)}, size, channels)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
