"""Recognition character dictionary: index 0 is the CTC blank, characters are 1..N.

PaddleOCR's `BaseRecLabelEncode` semantics: without `character_dict_path` the dictionary is
"0-9a-z" and labels are lower-cased; with a path it is one character per line (a trailing
"\\r\\n" stripped, so a line holding one space is the space character; an empty line keeps
its index but matches nothing), plus " " appended when `use_space_char` is set. A character
listed twice maps to its last index, as in PaddleOCR.

Labels are encoded as PaddleOCR 2.7's `BaseRecLabelEncode.encode` does (`encode_label`): a
label that is empty or longer than `max_text_length` *as written* (before lower-casing and before
any character is removed) is rejected; characters outside the dictionary are skipped and the
shortened label is kept; a label with nothing left is rejected. `unknown_chars="drop"` rejects
a label with any character outside the dictionary instead (jaxocr's earlier behaviour, selected
by the dataset key `unknown_chars: drop`). `encode(text)` itself is strict (None on any unknown
character); `encode(text, skip_unknown=True)` skips them.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable

log = logging.getLogger("jaxocr")

DEFAULT_CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyz"
UNKNOWN_CHARS_MODES = ("skip", "drop")  # dataset key `unknown_chars`; skip: PaddleOCR


BUNDLED_DICTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dicts")


def bundled_dict(dict_path: str) -> str | None:
    """jaxocr's copy of the PaddleOCR dictionary `dict_path` names (`ppocr/utils/...`, as
    PaddleOCR's configs write it, also with a leading `./` or an absolute prefix), or None."""
    parts = os.path.normpath(dict_path).replace(os.sep, "/").split("/")
    for i in range(len(parts) - 1):
        if parts[i:i + 2] == ["ppocr", "utils"]:
            candidate = os.path.join(BUNDLED_DICTS, *parts[i:])
            return candidate if os.path.isfile(candidate) else None
    return None


def resolve_dict_path(dict_path: str | os.PathLike) -> str:
    """The file to read for `character_dict_path`: the path itself when it exists, else the
    bundled copy of a PaddleOCR dictionary (logged), else a FileNotFoundError."""
    dict_path = os.fspath(dict_path)
    if os.path.isfile(dict_path):
        return dict_path
    bundled = bundled_dict(dict_path)
    if bundled is None:
        raise FileNotFoundError(
            f"character_dict_path not found: {dict_path} (PaddleOCR's own dictionaries are "
            f"found by their ppocr/utils/... path; jaxocr carries {_bundled_names()})")
    log.info("character_dict_path %s: no such file here; using PaddleOCR's, as jaxocr ships "
             "it: %s", dict_path, bundled)
    return bundled


def _bundled_names() -> str:
    names = sorted(os.path.relpath(os.path.join(d, f), BUNDLED_DICTS).replace(os.sep, "/")
                   for d, _, files in os.walk(BUNDLED_DICTS) for f in files if f.endswith(".txt"))
    shown = [n for n in names if n.count("/") == 2][:5]
    return f"{len(names)} of them, e.g. {', '.join(shown)}"


class CharacterDict:
    def __init__(self, dict_path: str | os.PathLike | None = None, use_space_char: bool = False):
        if dict_path:
            dict_path = resolve_dict_path(dict_path)
            chars: list[str] = []
            with open(dict_path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise ValueError(f"{dict_path}:{lineno}: not UTF-8 ({e})") from None
                    # kept even when empty, so ids match PaddleOCR's (and its pretrained heads)
                    chars.append(line.strip("\n").strip("\r\n"))
            if use_space_char:
                chars.append(" ")
            self.lower = False
        else:
            chars = list(DEFAULT_CHARACTERS)
            self.lower = True
        if not chars:
            raise ValueError(f"character dictionary {dict_path} is empty")
        self.dict_path = dict_path
        self.use_space_char = bool(use_space_char) and bool(dict_path)
        self.characters: list[str] = chars
        # later duplicates win; an empty line or a multi-character line never matches a char
        self._index = {c: i + 1 for i, c in enumerate(chars) if len(c) == 1}
        self._table = ["" for _ in range(len(chars) + 1)]
        for i, c in enumerate(chars):
            self._table[i + 1] = c

    @classmethod
    def from_config(cls, global_cfg: dict) -> "CharacterDict":
        return cls(global_cfg.get("character_dict_path") or None,
                   bool(global_cfg.get("use_space_char", False)))

    @property
    def num_classes(self) -> int:
        """Dictionary size plus the blank."""
        return len(self.characters) + 1

    def __len__(self) -> int:
        return len(self.characters)

    def __contains__(self, char: str) -> bool:
        return char in self._index

    def normalize(self, text: str) -> str:
        return text.lower() if self.lower else text

    def encode(self, text: str, skip_unknown: bool = False) -> list[int] | None:
        """Ids 1..N of `text`. A character outside the dictionary makes it None, or with
        `skip_unknown` is left out (PaddleOCR's encoder; the result may then be empty)."""
        index = self._index
        if skip_unknown:
            return [index[c] for c in self.normalize(text) if c in index]
        try:
            return [index[c] for c in self.normalize(text)]
        except KeyError:
            return None

    def encode_label(self, text: str, max_text_length: int, unknown_chars: str = "skip"):
        """(ids, problem) of a training label, as PaddleOCR 2.7's BaseRecLabelEncode.encode:
        problem is None (ids usable) or why the label cannot be used, a `dropped` key:
        'empty'; 'too_long' (more than `max_text_length` characters as written, checked before
        any is removed, as PaddleOCR does); 'unknown_char' (with unknown_chars='skip': no
        character left once those outside the dictionary are skipped; with 'drop': any
        character outside the dictionary). With 'skip', `len(ids)` may be less than the label's
        length: characters were removed."""
        if unknown_chars not in UNKNOWN_CHARS_MODES:
            raise ValueError(f"unknown_chars must be one of {UNKNOWN_CHARS_MODES}, "
                             f"got {unknown_chars!r}")
        if len(text) == 0:
            return None, "empty"
        if len(text) > max_text_length:
            return None, "too_long"
        ids = self.encode(text, skip_unknown=unknown_chars == "skip")
        if not ids:
            return None, "unknown_char"
        return ids, None

    def unknown_chars(self, text: str) -> set[str]:
        return {c for c in self.normalize(text) if c not in self._index}

    def decode(self, ids: Iterable[int]) -> str:
        """Characters of `ids`; 0 (blank/padding) and out-of-range ids are skipped."""
        table, n = self._table, len(self._table)
        return "".join(table[i] for i in map(int, ids) if 0 < i < n)

    def __repr__(self) -> str:
        src = self.dict_path or "default 0-9a-z (lower-cased)"
        return f"CharacterDict({src}, {len(self.characters)} chars, space={self.use_space_char})"

