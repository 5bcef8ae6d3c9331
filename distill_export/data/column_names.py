"""Which manifest column names can name a modality: a teacher's encoder (an nn.ModuleDict key),
an ONNX input, a checkpoint's file name and a report's keys. Rounds 39 to 45 of the hostile
audits (docs/reliability.md) found each rule here.

Two rules guard the label: a column whose letters spell `label`, `split` or `id` (whatever
symbols, marks or blanks are added, whatever the case or width) is refused, or the teacher would
read the class as text; and two modality columns that read as one name are refused.
"""

from __future__ import annotations

import unicodedata

RESERVED = ("label", "split", "id")
# An exported graph's output names: an input of the same name made the ONNX export recurse (40th B8).
OUTPUT_NAMES = ("logits", "heads", "boxes", "scores", "classes")
MAX_COLUMN_BYTES = 200  # teacher.<column>.pt (42nd audit A6)
# Letters and symbols that draw as nothing: the Hangul fillers and the blank Braille pattern
# ("label" + U+3164 read as "label" and fed the label to the teacher: 42nd audit B5).
BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Zero-width (non-)joiners shape words in Persian, Hindi and emoji sequences (43rd audit A1).
JOINERS = frozenset("\u200c\u200d")
BLACK_FLAG, TAGS = "\U0001F3F4", range(0xE0020, 0xE0080)  # 🏴 + tag letters + cancel tag: a region's flag
# Cyrillic and Greek letters drawn like Latin ones ("lаbеl" with Cyrillic а and е: 44th audit A1),
# capitals first: case folding turns Cyrillic "В" into "в", which looks like no Latin letter (45th C1).
CAPITAL_LOOKALIKES = str.maketrans("АВЕКМНОРСТХЅІЈӀΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEKMHOPCTXSIJlABEZHIKMNOPTYX")
# (and Latin small capitals, "ʟᴀʙᴇʟ": 45th audit C3)
LOOKALIKES = str.maketrans("аеорсухѕіјԁӏɩιοαʟᴀʙᴇɪᴅꜱᴘᴛ", "aeopcyxsijdllioalabeidspt")


def column_problem(name: str) -> str | None:
    """Why a column's name cannot name a modality, or None."""
    if not name.strip():
        return "it is empty"
    if "." in name:
        return "it holds '.', which separates the parts of a model's layer names"
    if "/" in name or "\\" in name:  # teacher.<column>.pt checkpoint files (fortieth audit B6)
        return "it holds a path separator, and file names are made from it"
    if name in OUTPUT_NAMES:
        return f"an exported model's outputs are named {', '.join(OUTPUT_NAMES)}"
    try:
        import torch

        if hasattr(torch.nn.ModuleDict(), name):  # "training", "forward": a KeyError traceback (40th B1, B7)
            return "it is the name of an attribute of a PyTorch module"
    except ImportError:  # the runtime-only install reads no manifests to train on
        pass
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "it holds a lone surrogate escape, which is no character"
    if (size := len(name.encode("utf-8"))) > MAX_COLUMN_BYTES:
        return f"it is {size} bytes long, and file names are made from it (at most {MAX_COLUMN_BYTES})"
    if hidden := next((c for i, c in enumerate(name) if invisible(c) and not _drawn(name, i)), None):
        # a zero-width space after "label" made a second, invisible label column (41st audit B3)
        return f"it holds a control or invisible character (U+{ord(hidden):04X})"
    spelled = letters(name)
    if spelled in RESERVED:  # "Split" was a text modality, and the file's splits were ignored (41st A3)
        if name.lower() == spelled:
            return f"it differs from the reserved column {spelled!r} only in case"
        # fullwidth "ｌａｂｅｌ", "ſplit" (42nd A2), "label" + a symbol that draws nothing (43rd B1)
        return f"its letters spell the reserved column {spelled!r}"
    return None


def invisible(char: str) -> bool:
    """Control, format (zero-width space, BOM) and private-use characters, and BLANKS. Not
    'unassigned': Python's Unicode tables lag the standard, and a new emoji read as unassigned
    (42nd audit B6)."""
    return char in BLANKS or unicodedata.category(char) in ("Cc", "Cf", "Co")


def _drawn(name: str, i: int) -> bool:
    """Whether the format character name[i] is part of what draws: a joiner between two characters
    that draw (not at an end, not beside a space), or a tag of a flag (🏴 + tags: 44th audit B2)."""
    char = name[i]
    if char in JOINERS:
        return (0 < i < len(name) - 1 and not name[i - 1].isspace() and not name[i + 1].isspace()
                and not invisible(name[i - 1]) and not invisible(name[i + 1]))
    if ord(char) in TAGS:
        start = i
        while start > 0 and ord(name[start - 1]) in TAGS:
            start -= 1
        return start > 0 and name[start - 1] == BLACK_FLAG
    return False


def _read(name: str) -> str:
    """NFKC (fullwidth forms), case folded, look-alike letters mapped to Latin."""
    return unicodedata.normalize("NFKC", name).translate(CAPITAL_LOOKALIKES).casefold().translate(LOOKALIKES)


def letters(name: str) -> str:
    """The name's letters and digits, as _read gives them: what is left to read once symbols,
    marks and blanks (which may draw nothing) are gone."""
    return "".join(c for c in _read(name) if unicodedata.category(c)[0] in "LN" and c not in BLANKS)


def reading(name: str) -> str:
    """The name as a reader sees it: _read, without the characters that draw nothing (format,
    blanks, and marks of combining class 0 such as U+034F and the variation selectors)."""
    return "".join(c for c in _read(name) if not invisible(c)
                   and not (unicodedata.category(c) == "Mn" and unicodedata.combining(c) == 0))


def read_alike(names) -> tuple[str, str] | None:
    """The first two names that read as one (`image` and `ｉｍａｇｅ`, `im` + U+200C + `age`), or None."""
    seen: dict[str, str] = {}
    for name in names:
        key = reading(name)
        if key in seen:
            return seen[key], name
        seen[key] = name
    return None


def visible(name: str) -> str:
    return "".join(c for c in name if not invisible(c)).strip()


def shown(name: str) -> str:
    """A name in a message: quoted, and escaped after it when it holds anything but ASCII (two
    spellings of `café` print alike: 44th audit A2)."""
    return repr(name) if name.isascii() else f"{name!r} ({ascii(name)})"


def column_shown(name: str) -> str:
    """A column name as a message shows it: as written, or repr'd when it holds an invisible character."""
    return repr(name) if any(invisible(c) for c in name) else name
