"""Reading microscopy image files: 8- and 16-bit PNG and TIFF (single- or multi-page), NumPy
``.npy`` arrays, and the checks that find missing, truncated or corrupt files without decoding
them.

Arrays come back as C×H×W in the file's own dtype; :func:`to_unit` maps them to float32 in
[0, 1] (uint16 / 65535, uint8 / 255, float as is), the convention of the generic folder format.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

TIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)
OTHER_PIL_SUFFIXES = (".jpg", ".jpeg", ".bmp")
NPY_SUFFIXES = (".npy",)


class ImageError(Exception):
    """A file that cannot be read as an image; the message says why (not which file)."""


def _suffix(path) -> str:
    name = str(path).lower()
    if name.endswith(".ome.tif") or name.endswith(".ome.tiff"):
        return ".tiff"
    return os.path.splitext(name)[1]


def read_array(path) -> np.ndarray:
    """The image at ``path`` as a C×H×W array in its stored dtype.

    TIFF: a multi-page file gives one channel per page, a C×H×W series its channels, and RGB
    samples (H×W×S) become S channels. PNG and JPEG: grayscale gives one channel, 16-bit
    grayscale stays uint16, colour gives one channel per band. ``.npy``: H×W, C×H×W, or H×W×C
    as NumPy, scikit-image and PIL arrays hold colour (see :func:`npy_channels_last`). Raises
    ``ImageError`` for anything else.
    """
    suffix = _suffix(path)
    try:
        if suffix in TIFF_SUFFIXES:
            array = _read_tiff(path)
        elif suffix in PNG_SUFFIXES or suffix in OTHER_PIL_SUFFIXES:
            array = _read_pil(path)
        elif suffix in NPY_SUFFIXES:
            array = np.load(path, allow_pickle=False)
            if npy_channels_last(array.shape):
                array = _bands_first(array)
        else:
            raise unsupported_type(suffix)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("the file does not exist") from None
    except (OSError, ValueError, SyntaxError, tifffile.TiffFileError, EOFError) as error:
        raise ImageError(f"cannot decode it ({type(error).__name__}: {error})") from None
    return as_chw(array)


def _read_tiff(path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        array = series.asarray()
        if array.ndim == 2 and len(tif.pages) > 1:
            # Pages written one at a time (ImageJ, CellProfiler, ...) form several series of one
            # page each: stack the pages that have the first one's shape as channels.
            pages = [page for page in tif.pages if page.shape == tif.pages[0].shape]
            array = np.stack([page.asarray() for page in pages])
        elif array.ndim == 3 and axes.endswith("S"):
            array = np.moveaxis(array, -1, 0)
        elif array.ndim > 3:
            array = array.reshape(-1, *array.shape[-2:])
    return array


def _read_pil(path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(image, dtype=np.uint16)
        if image.mode == "I":
            array = np.asarray(image)
            return array.astype(np.uint16) if array.min() >= 0 and array.max() < 65536 else array
        if image.mode in ("P", "LA", "PA", "CMYK", "YCbCr", "1"):
            image = image.convert("RGB" if image.mode in ("P", "CMYK", "YCbCr") else "L")
        if image.mode == "RGBA":
            image = image.convert("RGB")
        array = np.asarray(image)
    # PIL gives colour as H×W×bands: the bands become the channels.
    return _bands_first(array) if array.ndim == 3 else array


def _bands_first(array: np.ndarray) -> np.ndarray:
    """An H×W×bands array as bands×H×W, contiguous."""
    return np.ascontiguousarray(np.moveaxis(array, -1, 0))


# The most channels an image saved channels last is taken to have; no microscope image is this
# narrow, so a last axis this short is a channel axis.
MOST_CHANNELS_LAST = 8


def npy_channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a saved array of ``shape`` holds its channels last (H×W×C): three axes, the last
    no longer than ``MOST_CHANNELS_LAST`` and shorter than the first two."""
    return len(shape) == 3 and shape[2] <= MOST_CHANNELS_LAST and shape[2] < min(shape[0], shape[1])


def as_chw(array: np.ndarray) -> np.ndarray:
    """H×W becomes 1×H×W; C×H×W stays. Anything else raises ``ImageError``."""
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        return array
    raise ImageError(f"expected a 2-d or 3-d image, got an array of shape {array.shape}")


def to_unit(array: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: uint16 / 65535, uint8 / 255, other integers by their dtype's range,
    float as is."""
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype.kind in "iu":
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    return array.astype(np.float32, copy=False)


def split_strip(array: np.ndarray, tiles: int | None) -> np.ndarray:
    """A horizontal strip (C×H×(W·N), channels side by side) as N·C×H×W. ``tiles`` None: square
    tiles, N = width / height."""
    _, height, width = array.shape
    n = tiles or (width // height if height and width % height == 0 else 0)
    if not n or width % n:
        raise ImageError(
            f"cannot split a {height}×{width} strip into "
            + (
                f"{tiles} equal tiles"
                if tiles
                else "square tiles (width is not a multiple of height); set dataset.strip_channels"
            )
        )
    step = width // n
    return np.concatenate([array[:, :, i * step : (i + 1) * step] for i in range(n)], axis=0)


def probe(path) -> tuple[int, int, int]:
    """(channels, height, width) of the image at ``path`` from its header, after checking that
    the file is complete: a TIFF's image data lies within the file, a PNG's chunks are whole and
    their checksums right. Cheap: no pixel data is decoded. Raises ``ImageError``."""
    path = Path(path)
    suffix = _suffix(path)
    try:
        size = path.stat().st_size
        if suffix in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                pages = tif.pages
                first = pages[0]
                for page in pages:
                    ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts)]
                    if not ends or max(ends) > size:
                        raise ImageError(
                            f"the file is truncated ({size} bytes; its image data "
                            f"needs {max(ends) if ends else '?'})"
                        )
                shape = first.shape
                if len(shape) == 3 and first.axes.endswith("S"):
                    return shape[2], shape[0], shape[1]
                if len(shape) == 3:
                    return shape[0], shape[1], shape[2]
                same = sum(1 for page in pages if page.shape == shape)
                return same, shape[0], shape[1]
        if suffix in PNG_SUFFIXES or suffix in OTHER_PIL_SUFFIXES:
            with Image.open(path) as image:
                width, height = image.size
                bands = (
                    len(image.getbands())
                    if image.mode not in ("P", "RGBA", "LA", "PA")
                    else (3 if image.mode in ("P", "RGBA") else 1)
                )
                if suffix in PNG_SUFFIXES:
                    image.verify()
            return bands, height, width
        if suffix in NPY_SUFFIXES:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if npy_channels_last(array.shape):
                return array.shape[2], array.shape[0], array.shape[1]
            return as_chw(array).shape
        raise unsupported_type(suffix)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("the file does not exist") from None
    except (OSError, ValueError, SyntaxError, IndexError, tifffile.TiffFileError, EOFError) as error:
        raise ImageError(f"cannot read it ({type(error).__name__}: {error})") from None


def unsupported_type(suffix: str) -> ImageError:
    """The error for a file type no reader handles, naming the ones that are."""
    return ImageError(f"unsupported image type '{suffix or 'no suffix'}' (use .tif/.tiff, .png or .npy)")
