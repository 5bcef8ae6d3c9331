"""Modality loaders for manifest datasets: one file or cell in, one array out.

image: a file read with PIL -> (C, H, W) float32 in [0, 1], C = 1 (grayscale) or 3 (RGB); 8-bit
       sources can stay uint8 (held compact, data/compact.py); every PIL mode by its real range.
audio: a WAV read with the stdlib (data/audio.py) -> (1, n_mels, n_frames) log-mel in dB,
       resampled to DEMO_AUDIO_SPEC's rate first when the file has another one.
text:  a string -> (max_tokens,) int64 ids of hashed character n-grams (0 = padding),
       tokenizer-free; FusionTeacher reads them with an EmbeddingBag.
video: a video file or a folder of frames (data/video.py) -> a clip (T, C, H, W) and its target
       frame (C, H, W), both read like images.

Every problem is a DataError whose message names the problem, not the row: the manifest
reader adds file:line.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np

from distill_export.data.audio import DEMO_AUDIO_SPEC, log_mel, read_wav, resample
from distill_export.errors import DataError
from distill_export.files import not_a_regular_file

KINDS = ("image", "audio", "text", "video")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
AUDIO_EXTS = {".wav", ".wave"}
VIDEO_EXTS = {".mp4", ".mkv", ".avi", ".webm", ".mov"}
_FRAME_INDEX = re.compile(r"#(-?\d+)$")  # a video cell's target frame: clips/0001.mkv#2
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

# Text: hashed character n-grams inside word boundaries (fastText-style), no vocabulary.
TEXT_BUCKETS = 1 << 14  # ids 1..TEXT_BUCKETS-1; 0 is padding
TEXT_NGRAMS = (2, 3, 4)
TEXT_MAX_TOKENS = 256


def kind_of_column(name: str, values: list[str]) -> str:
    """Modality kind of a manifest column: by its name (image, audio_left, caption_text, video...),
    else by its first non-empty values' file extensions (a video's may end in #<frame index>),
    else text."""
    low = name.lower()
    for kind in KINDS:
        if low == kind or low.startswith(kind + "_") or low.endswith("_" + kind):
            return kind
    exts = [Path(v).suffix.lower() for v in values if v][:20]
    if exts and all(e in IMAGE_EXTS for e in exts):
        return "image"
    if exts and all(e in AUDIO_EXTS for e in exts):
        return "audio"
    if exts and all(Path(split_cell(v)[0]).suffix.lower() in VIDEO_EXTS for v in [v for v in values if v][:20]):
        return "video"
    return "text"


def split_cell(cell: str) -> tuple[str, int | None]:
    """A video cell -> (path, target frame index): 'clips/0001.mkv#2' -> ('clips/0001.mkv', 2);
    without a '#<integer>' suffix -> (cell, None)."""
    m = _FRAME_INDEX.search(cell)
    return (cell, None) if m is None else (cell[: m.start()], int(m.group(1)))


# ----- image ---------------------------------------------------------------------------------
# How each PIL mode becomes pixels in [0, 1] (docs/reliability.md, "Decoding that keeps the data"):
# 8-bit modes are held as uint8 and scaled by 255; modes with alpha are composited over black
# (a fully transparent pixel is 0 whatever colour it stores); 16-bit gray is scaled by 65535;
# mode I (32-bit integer) is read as 16-bit and refused outside 0-65535; mode F (32-bit float) has
# one scale per manifest column (Decoder.float_scale, from all of its mode-F images): as it is when
# they all lie in [0, 1], divided by 255 when any is above 1 (all in [0, 255]); an image outside
# [0, 255] is refused. A lone image (no column) takes the rule from its own pixels.
EIGHT_BIT_MODES = {"1", "L", "P", "RGB", "RGBA", "RGBX", "LA", "PA", "La", "RGBa", "CMYK", "YCbCr"}
ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
WIDE_MODES = SIXTEEN_BIT_MODES | {"I", "F"}
SUPPORTED_MODES = EIGHT_BIT_MODES | WIDE_MODES
# A source image's pixels (width x height), checked from its header before it is decoded: an
# 8192x8192 image is 200 MB as RGB; a larger one is refused, naming its size. It also keeps PIL's
# decompression-bomb guard (89 M pixels: a warning, 179 M: an error) from ever being reached.
MAX_IMAGE_PIXELS = 8192 * 8192


def open_image_header(path: Path):
    """The image opened lazily (its header only: size and mode), or a DataError naming what is wrong:
    a missing, empty or unreadable file, an unsupported mode, more than MAX_IMAGE_PIXELS pixels.
    The caller closes it (or loads it)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    problem = not_a_regular_file(path, "image file")
    if problem:
        raise DataError(problem)
    if path.stat().st_size == 0:
        raise DataError(f"image file is empty: {path}")
    try:
        with warnings.catch_warnings():  # PIL's bomb warning: the size check below says it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"not an image PIL can read: {path}") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {path} is too large to decode ({str(exc)[:80]}); the limit is "
                        f"{MAX_IMAGE_PIXELS / 1e6:.1f} M pixels (8192x8192)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt image {path}: {str(exc)[:120]}") from None
    try:
        check_header(im, path)
    except DataError:
        im.close()
        raise
    return im


# PNG colour types whose 16-bit samples PIL decodes to 8 bits, dropping the low byte (Pillow has
# no 16-bit-per-channel colour mode): colour type -> what the file is. 16-bit gray (type 0) opens
# as mode I;16 and keeps its range. Read from the IHDR chunk itself (bit depth at byte 24, colour
# type at byte 25 of the file): PIL reports these as plain RGB/RGBA (twenty-first audit B5).
_PNG_WIDE_COLOUR = {2: "16-bit-per-channel colour (RGB)", 6: "16-bit-per-channel colour (RGBA)",
                    4: "16-bit gray with alpha"}


def check_png_depth(path: Path) -> None:
    """Refuse a PNG whose 16-bit samples PIL would read as 8 bits (a dark picture becomes all 0)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(b"\x89PNG\r\n\x1a\n") or head[12:16] != b"IHDR":
        return  # not a PNG with its IHDR first: PIL refuses it or it is another format
    depth, colour = head[24], head[25]
    if depth == 16 and colour in _PNG_WIDE_COLOUR:
        raise DataError(f"image {path} is a {_PNG_WIDE_COLOUR[colour]} PNG, which the decoder reads as 8 bits "
                        "(the low byte of each sample would be dropped): save it as 8-bit colour or 16-bit gray")


def _ppm_maxval(path: Path) -> int | None:
    """The maxval of a colour PPM (P3/P6: magic, width, height, maxval; '#' comments between)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:2] not in (b"P3", b"P6"):
        return None
    tokens = [t for line in head[2:].splitlines() for t in line.split(b"#")[0].split()]
    return int(tokens[2]) if len(tokens) >= 3 and tokens[2].isdigit() else None


def check_wide_colour(im, path: Path) -> None:
    """Refuse a colour image with more than 8 bits per sample that PIL reads as 8 (the low byte
    dropped: a 0-255 picture stored in 16 bits becomes all 0): PNG from its IHDR, a PPM from its
    maxval, a TIFF from its BitsPerSample (twenty-first audit B5, twenty-second B3)."""
    if im.format == "PNG":
        check_png_depth(path)
        return
    wide = None
    if im.format == "PPM" and (maxval := _ppm_maxval(path)) is not None and maxval > 255:
        wide = f"a colour PPM with maxval {maxval} (more than 8 bits per sample)"
    elif im.format == "TIFF" and im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB"):
        bits = getattr(im, "tag_v2", {}).get(258) or ()
        bits = bits if isinstance(bits, tuple) else (bits,)
        if any(isinstance(b, int) and b > 8 for b in bits):
            wide = f"a {max(bits)}-bit-per-channel colour TIFF"
    if wide:
        raise DataError(f"image {path} is {wide}, which the decoder reads as 8 bits (the low byte of each sample "
                        "would be dropped): save it as 8-bit colour or 16-bit gray")


def check_header(im, path: Path) -> None:
    check_wide_colour(im, path)
    if im.width == 0 or im.height == 0:
        raise DataError(f"image has no pixels: {path}")
    if im.width * im.height > MAX_IMAGE_PIXELS:
        raise DataError(f"image {path} is {im.width}x{im.height} ({im.width * im.height / 1e6:.1f} M pixels), more "
                        f"than the {MAX_IMAGE_PIXELS / 1e6:.1f} M pixel limit (8192x8192): downscale it")
    if im.mode not in SUPPORTED_MODES:
        raise DataError(f"image {path} has PIL mode {im.mode}, which is not read (supported: "
                        f"{', '.join(sorted(SUPPORTED_MODES))}); convert it to RGB, L or 16-bit gray")
    if getattr(im, "is_animated", False):  # GIF, APNG, WebP, multi-page TIFF: PIL would give frame 0 alone
        try:
            frames = f"{im.n_frames} frames"
        except (OSError, EOFError, ValueError):  # a truncated animation: still more than one picture
            frames = "several frames"
        raise DataError(f"image {path} is an animated or multi-page {im.format} with {frames}, and an image cell "
                        "is one picture (frame 0 alone would be read in silence); save the frame you mean as its "
                        "own file, or give the frames as a video column")


# EXIF orientations (0x0112) stored rotated by 90 degrees: the shown image is the stored one transposed.
_AXES_SWAPPED = (5, 6, 7, 8)


def displayed_size(im) -> tuple[int, int]:
    """(H, W) of the image as a viewer shows it: its EXIF orientation applied (a phone photo is
    often stored sideways with orientation 6), the size read_image returns and boxes refer to."""
    try:
        swapped = im.getexif().get(0x0112, 1) in _AXES_SWAPPED
    except Exception:  # noqa: BLE001 - unreadable EXIF: PIL shows the pixels as stored, and so do we
        swapped = False
    return (im.width, im.height) if swapped else (im.height, im.width)


def read_image(path: str | Path):
    """Open and fully decode an image; return the PIL image (mode untouched), turned upright by
    its EXIF orientation as every viewer shows it. Its header is checked first (open_image_header:
    size, mode), so an absurd image is refused undecoded."""
    from PIL import Image, ImageOps

    path = Path(path)
    im = open_image_header(path)
    try:
        with im:
            im.load()  # decode now: a truncated file fails here, not later
            try:
                out = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001 - an unreadable EXIF block: the pixels as stored
                out = im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"corrupt image {path}: {str(exc)[:120]}") from None
    out.info.setdefault("source", str(path))
    return out


def image_to_array(im, size: tuple[int, int], rgb: bool, compact: bool = False,
                   float_scale: float | None = None) -> np.ndarray:
    """PIL image -> (C, H, W) in [0, 1] at size (height, width), C = 3 if rgb else 1: float32, or
    with `compact` uint8 when the source is 8-bit (the caller scales by 255; float32 otherwise).
    Each mode is read with its real range (the rules above EIGHT_BIT_MODES), or a DataError.
    float_scale: a mode-F image's divisor decided for its column (1 or 255); None: from its pixels."""
    from PIL import Image

    source = im.info.get("source", "image")
    if im.mode not in SUPPORTED_MODES:
        raise DataError(f"image {source} has PIL mode {im.mode}, which is not read (supported: "
                        f"{', '.join(sorted(SUPPORTED_MODES))})")
    if im.mode in WIDE_MODES:
        x = _wide_to_unit(im, source, float_scale)  # (H, W) float32 in [0, 1]
        if x.shape != tuple(size):
            x = np.asarray(Image.fromarray(x, mode="F").resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)
        x = x[None]
        return np.ascontiguousarray(np.repeat(x, 3, axis=0) if rgb else x)
    if im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    im = im.convert("RGB" if rgb else "L")
    if (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    x = np.asarray(im, dtype=np.uint8)  # (H, W) or (H, W, 3)
    x = x[None] if x.ndim == 2 else np.ascontiguousarray(x.transpose(2, 0, 1))
    return x if compact else x.astype(np.float32) / 255.0  # float32(u) / 255: the values held compact


def _wide_to_unit(im, source, float_scale: float | None = None) -> np.ndarray:
    """A 16/32-bit gray image -> (H, W) float32 in [0, 1] by its mode's rule, or a DataError."""
    x = np.asarray(im)
    if im.mode in SIXTEEN_BIT_MODES:
        return (x.astype(np.float32) / 65535.0).astype(np.float32)
    if im.mode == "I":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 65535:
            raise DataError(f"image {source}: mode I (32-bit integer) pixels range from {lo} to {hi}; they are "
                            "read as 16-bit (0-65535): save it as 8-bit, 16-bit or float in [0, 1]")
        return (x.astype(np.float32) / 65535.0).astype(np.float32)
    x = x.astype(np.float32)  # mode F
    lo, hi = float_range(x, source)
    scale = float_scale or float_scale_of(hi)
    if lo >= 0 and hi <= scale:
        return x if scale == 1 else (x / np.float32(scale)).astype(np.float32)
    column = " (the scale its column's other float images set)" if float_scale else ""
    raise DataError(f"image {source}: mode F (32-bit float) pixels range from {lo:g} to {hi:g}, outside "
                    f"[0, {scale:g}]{column}; float images are read in [0, 1], or all of a column in "
                    "[0, 255] (divided by 255): rescale it")


def float_range(x: np.ndarray, source) -> tuple[float, float]:
    """(min, max) of a mode-F image's pixels; a DataError when any is not finite."""
    if not np.isfinite(x).all():
        raise DataError(f"image {source}: mode F (32-bit float) has non-finite pixels")
    return float(x.min()), float(x.max())


def float_scale_of(hi: float) -> float:
    """The divisor of float pixels whose largest value (over an image or a column) is `hi`."""
    return 1.0 if hi <= 1 else 255.0


def is_grayscale(im) -> bool:
    if im.mode in GRAY_MODES:
        return True
    if im.mode == "P":
        return im.convert("RGB").convert("L").convert("RGB").tobytes() == im.convert("RGB").tobytes()
    return False


# ----- audio ---------------------------------------------------------------------------------
def load_audio(path: str | Path, spec: dict | None = None, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """WAV -> ((1, n_mels, n_frames) float32 log-mel dB, the file's sample rate).

    A file at another rate is resampled to spec['sample_rate']; the caller reports it.
    Rates outside 1-384 kHz and clips over max_seconds (default audio.MAX_AUDIO_SECONDS) fail.
    """
    spec = spec or DEMO_AUDIO_SPEC
    path = Path(path)
    problem = not_a_regular_file(path, "audio file")
    if problem:
        raise DataError(problem)
    if path.stat().st_size == 0:
        raise DataError(f"audio file is empty: {path}")
    wave, sr = read_wav(path) if max_seconds is None else read_wav(path, max_seconds=max_seconds)
    if not np.isfinite(wave).all():
        raise DataError(f"audio file holds non-finite samples: {path}")
    if sr != spec["sample_rate"]:
        wave = resample(wave, sr, spec["sample_rate"])
    return log_mel(wave, **spec).numpy()[None], sr


# ----- text ----------------------------------------------------------------------------------
def _bucket(gram: str) -> int:
    return zlib.crc32(gram.encode("utf-8")) % (TEXT_BUCKETS - 1) + 1  # stable across runs


def hash_text(text: str, max_tokens: int = TEXT_MAX_TOKENS) -> np.ndarray:
    """Text -> (max_tokens,) int64 bucket ids of its words and their character n-grams."""
    ids: list[int] = []
    for word in text.lower().split():
        ids.append(_bucket("w:" + word))
        padded = f"<{word}>"
        for n in TEXT_NGRAMS:
            ids.extend(_bucket(padded[i : i + n]) for i in range(max(0, len(padded) - n + 1)))
    out = np.zeros(max_tokens, dtype=np.int64)
    ids = ids[:max_tokens]
    out[: len(ids)] = ids
    return out


def sentence_embeddings(texts: list[str]) -> np.ndarray:
    """Optional: (N, D) float32 sentence embeddings from the `wordllama` package, whose
    pip wheel ships its weights (no download). Only used with data.text_encoder=wordllama."""
    try:
        import wordllama  # optional dependency
    except ImportError:
        raise DataError("data.text_encoder=wordllama needs the optional package: pip install wordllama "
                        "(or use the default text_encoder=hashed)") from None
    try:
        # The wheel ships weights/ and tokenizers/; pointing cache_dir at the package makes
        # load() find both there and never reach for the network.
        model = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
        emb = model.embed(texts)
    except Exception as exc:  # noqa: BLE001 - a third-party model; say what broke
        raise DataError(f"wordllama could not embed the text column: {str(exc)[:200]}") from None
    return np.asarray(emb, dtype=np.float32)
