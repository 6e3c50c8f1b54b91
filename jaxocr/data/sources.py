"""Recognition dataset sources: `len(src)`, `src.load(i) -> {'image' | 'image_bytes', 'label'}`
and `src.dropped`, the counts of labels filtered out when the source was built.

Labels that cannot be trained on (a character outside the dictionary, longer than
`Global.max_text_length`, empty) are removed here, once, and counted by reason, so a batch never
loses a sample to its label. Images are read lazily in `load`; one that cannot be read raises
`BadSample` (the pipeline substitutes another sample and counts it).

- SimpleDataSet: PaddleOCR label files, `rel/path<delimiter>label` per line.
- LMDBDataSet: every directory under `data_dir` holding a `data.mdb`, keys `num-samples`,
  `image-%09d`, `label-%09d` (1-based), as in PaddleOCR / deep-text-recognition-benchmark.
- SynthTextLine: text lines rendered on the fly (jaxocr/data/synth.py).
"""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter

import numpy as np

from jaxocr.data.charset import CharacterDict
from jaxocr.data.synth import MAX_DEFAULT_LEN, SynthTextLine
from jaxocr.data.transforms import BadSample

log = logging.getLogger("jaxocr")

KNOWN_SOURCES = ("SimpleDataSet", "LMDBDataSet", "SynthTextLine")
SYNTH_DEFAULT_SAMPLES = {"train": 10000, "eval": 1000}
EVAL_SEED_OFFSET = 1_000_003  # the default synthetic Eval set differs from the Train set


def label_problem(label: str, charset: CharacterDict, max_text_length: int) -> str | None:
    """Why `label` cannot be trained on with CTC (a `dropped` key), or None if it can."""
    if label == "":
        return "empty"
    ids = charset.encode(label)
    if ids is None:
        return "unknown_char"
    if len(ids) > max_text_length:
        return "too_long"
    return None


# ----------------------------------------------------------------------------------------------
class SimpleDataSet:
    def __init__(self, data_dir: str, label_file_list, charset: CharacterDict,
                 max_text_length: int, seed: int = 0, ratio_list=1.0, delimiter: str = "\t"):
        if data_dir is None or data_dir == "":
            data_dir = "."
        self.data_dir = os.fspath(data_dir)
        if not os.path.isdir(self.data_dir):
            raise FileNotFoundError(f"SimpleDataSet data_dir not found: {self.data_dir}")
        if not label_file_list:
            raise ValueError("SimpleDataSet needs label_file_list (a list of label files)")
        if isinstance(label_file_list, (str, os.PathLike)):
            label_file_list = [label_file_list]
        files = [os.fspath(p) for p in label_file_list]
        if isinstance(ratio_list, (int, float)):
            ratios = [float(ratio_list)] * len(files)
        else:
            ratios = [float(r) for r in ratio_list]
            if len(ratios) != len(files):
                raise ValueError(f"SimpleDataSet: ratio_list has {len(ratios)} entries for "
                                 f"{len(files)} label files")
        for r in ratios:
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"SimpleDataSet: ratio_list values must be in [0, 1], got {r}")
        if not delimiter:
            raise ValueError("SimpleDataSet: delimiter must not be empty")
        self.delimiter = delimiter
        missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"SimpleDataSet label file(s) not found: {', '.join(missing)}")

        dropped: Counter = Counter()
        self.paths: list[str] = []
        self.labels: list[str] = []
        for file_index, (path, ratio) in enumerate(zip(files, ratios)):
            with open(path, "rb") as f:
                lines = [ln for ln in f.read().splitlines() if ln.strip()]
            if ratio < 1.0:  # seeded subsample, file order kept (the loader shuffles)
                rng = np.random.default_rng([int(seed), file_index])
                keep = rng.choice(len(lines), size=round(len(lines) * ratio), replace=False)
                lines = [lines[k] for k in np.sort(keep)]
            for raw in lines:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    dropped["malformed"] += 1
                    continue
                parts = line.split(delimiter)
                if len(parts) < 2 or not parts[0]:
                    dropped["malformed"] += 1
                    continue
                # PaddleOCR takes the second field as the label (a third one is ignored)
                rel, label = parts[0], parts[1]
                problem = label_problem(label, charset, max_text_length)
                if problem:
                    dropped[problem] += 1
                    continue
                self.paths.append(rel)
                self.labels.append(label)
        self.dropped: dict[str, int] = dict(dropped)
        self.label_files = files

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> dict:
        path = os.path.join(self.data_dir, self.paths[i])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BadSample(f"cannot read image {path}: {e.strerror or e}") from None
        return {"image_bytes": data, "label": self.labels[i], "img_path": path}

    def __repr__(self) -> str:
        return f"SimpleDataSet({len(self)} samples from {self.label_files}, dropped {self.dropped})"


# ----------------------------------------------------------------------------------------------
# One read-only Environment per LMDB path per process, shared by every source and thread
# (py-lmdb refuses to open the same environment twice in a process). A forked child starts
# with none: environments are not usable across fork.
_ENV_LOCK = threading.Lock()
_ENVS: dict[str, object] = {}
_ENVS_PID = os.getpid()


def _reset_after_fork():
    global _ENV_LOCK, _ENVS, _ENVS_PID
    _ENV_LOCK = threading.Lock()  # a thread of the parent may have held it at fork time
    _ENVS, _ENVS_PID = {}, os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def lmdb_env(path: str):
    """This process's shared read-only environment for the LMDB directory `path`."""
    if _ENVS_PID != os.getpid():  # forked without the at-fork hook (should not happen)
        _reset_after_fork()
    env = _ENVS.get(path)
    if env is None:
        with _ENV_LOCK:
            env = _ENVS.get(path)
            if env is None:
                import lmdb

                env = _ENVS[path] = lmdb.open(path, readonly=True, lock=False,
                                              readahead=False, meminit=False, max_readers=512,
                                              subdir=True)
    return env


def find_lmdb_dirs(data_dir: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(data_dir, followlinks=True):
        dirs.sort()
        if "data.mdb" in files:
            found.append(os.path.realpath(root))
    return found


def _scan_labels(path: str, charset: CharacterDict, max_text_length: int, dropped: Counter):
    """(num-samples, bool[n+1] of usable 1-based keys) of one LMDB; problems added to dropped.
    Labels are walked with one cursor in key order (fast even for millions)."""
    with lmdb_env(path).begin(buffers=False) as txn:
        raw = txn.get(b"num-samples")
        if raw is None:
            raise ValueError(f"LMDBDataSet: {path} has no 'num-samples' key")
        n = int(raw.decode())
        ok = np.zeros(n + 1, bool)
        cursor = txn.cursor()
        if not cursor.set_range(b"label-"):
            return n, ok
        for key, value in cursor:
            if not key.startswith(b"label-"):
                break
            try:
                idx = int(key[6:])
            except ValueError:
                continue
            if not 1 <= idx <= n:
                continue
            try:
                label = value.decode("utf-8")
            except UnicodeDecodeError:
                dropped["malformed"] += 1
                continue
            problem = label_problem(label, charset, max_text_length)
            if problem:
                dropped[problem] += 1
            else:
                ok[idx] = True
    return n, ok


class LMDBDataSet:
    """Read-only LMDBs. Environments are opened once per process (again after a fork, lazily)
    and shared by its threads and sources; each `load` reads in its own transaction. Only
    paths and index arrays are kept (labels are re-read in `load`), so it pickles small."""

    def __init__(self, data_dir: str, charset: CharacterDict, max_text_length: int):
        if not data_dir or not os.path.isdir(data_dir):
            raise FileNotFoundError(f"LMDBDataSet data_dir not found: {data_dir}")
        self.data_dir = os.fspath(data_dir)
        self.dirs = find_lmdb_dirs(self.data_dir)
        if not self.dirs:
            raise FileNotFoundError(f"LMDBDataSet: no LMDB (a directory with data.mdb) under "
                                    f"{self.data_dir}")
        dropped: Counter = Counter()
        env_ids, key_ids = [], []
        self.sizes = []
        for k, d in enumerate(self.dirs):
            n, ok = _scan_labels(d, charset, max_text_length, dropped)
            present = np.flatnonzero(ok)
            env_ids.append(np.full(len(present), k, np.int32))
            key_ids.append(present.astype(np.int64))
            self.sizes.append(n)
        self._env_of = np.concatenate(env_ids)
        self._key_of = np.concatenate(key_ids)
        total = sum(self.sizes)
        unaccounted = total - len(self._key_of) - sum(dropped.values())  # no label-N key
        if unaccounted > 0:
            dropped["missing_label"] += unaccounted
        self.dropped: dict[str, int] = dict(dropped)

    def __len__(self) -> int:
        return len(self._key_of)

    def load(self, i: int) -> dict:
        k, idx = int(self._env_of[i]), int(self._key_of[i])
        with lmdb_env(self.dirs[k]).begin(buffers=False) as txn:
            image = txn.get(b"image-%09d" % idx)
            label = txn.get(b"label-%09d" % idx)
        if not image:
            raise BadSample(f"LMDB {self.dirs[k]}: no image-{idx:09d}")
        return {"image_bytes": image, "label": label.decode("utf-8"),
                "img_path": f"{self.dirs[k]}#{idx}"}

    def __repr__(self) -> str:
        return (f"LMDBDataSet({len(self)} samples in {len(self.dirs)} LMDBs under "
                f"{self.data_dir}, dropped {self.dropped})")


# ----------------------------------------------------------------------------------------------
def build_source(dataset_cfg: dict, mode: str, charset: CharacterDict, global_cfg: dict,
                 seed: int):
    """The dataset of a `Train.dataset` / `Eval.dataset` config section; mode 'train'|'eval'."""
    name = dataset_cfg.get("name")
    mode = str(mode).lower()
    max_len = int(global_cfg.get("max_text_length", 25))
    if name == "SimpleDataSet":
        return SimpleDataSet(dataset_cfg.get("data_dir"), dataset_cfg.get("label_file_list"),
                             charset, max_len, seed=seed,
                             ratio_list=dataset_cfg.get("ratio_list", 1.0),
                             delimiter=dataset_cfg.get("delimiter", "\t"))
    if name == "LMDBDataSet":
        return LMDBDataSet(dataset_cfg.get("data_dir"), charset, max_len)
    if name == "SynthTextLine":
        ds_seed = dataset_cfg.get("seed")
        if ds_seed is None:
            ds_seed = int(seed) + (EVAL_SEED_OFFSET if mode == "eval" else 0)
        max_text = dataset_cfg.get("max_len")
        max_text = min(MAX_DEFAULT_LEN, max_len) if max_text is None else int(max_text)
        if max_text > max_len:
            raise ValueError(f"SynthTextLine: max_len {max_text} exceeds Global.max_text_length "
                             f"{max_len}")
        num = dataset_cfg.get("num_samples")
        if num is None:
            num = SYNTH_DEFAULT_SAMPLES.get(mode, SYNTH_DEFAULT_SAMPLES["train"])
        return SynthTextLine(charset, num_samples=int(num), seed=int(ds_seed),
                             min_len=int(dataset_cfg.get("min_len", 1)), max_len=max_text,
                             fonts=dataset_cfg.get("fonts"),
                             mixed_case=dataset_cfg.get("mixed_case"))
    raise ValueError(f"unknown dataset name {name!r}; known: {', '.join(KNOWN_SOURCES)}")
