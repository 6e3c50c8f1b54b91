"""Recognition dataset sources, built once per run from a `Train.dataset` / `Eval.dataset` section.

Every source has
- `num_entries`: how many samples it holds; `load(i)` takes a *raw* index 0 <= i < num_entries and
  returns {'image' | 'image_bytes', 'label', ...} (the label as written in the data);
- `epoch_indices(epoch)`: the int64 array of raw indices used in that epoch (ascending; the
  loader shuffles). Always an array: `arange(num_entries)` unless SimpleDataSet's `ratio_list`
  draws a subset, which is redrawn every epoch from (seed, epoch, file index) as PaddleOCR
  rebuilds its train set each epoch; an evaluation keeps epoch 0's (PaddleOCR builds it once);
- `len(src)`: the samples per epoch, `len(epoch_indices(e))` for every e (what steps_per_epoch is
  counted from); equal to num_entries unless a ratio is below 1;
- `dropped`: {reason: count} of the entries removed when the source was built, and
  `chars_removed` / `removed_chars`: how many kept labels lost characters outside the dictionary
  (and a Counter of those characters by labels holding them).

Labels follow PaddleOCR 2.7's CTCLabelEncode (`CharacterDict.encode_label`), applied here once so
that a batch never loses a sample to its label: characters outside the dictionary are skipped
and the sample kept (`unknown_chars: drop` drops it instead, counted as 'unknown_char'); dropped
are 'empty' labels, 'too_long' ones (more than Global.max_text_length characters as written),
'unknown_char' (no character left), 'malformed' lines and, in training with `max_ctc_steps` (the
model's T output frames), 'too_long_for_ctc' labels needing more frames than T (one per
character plus a blank between equal neighbours): their CTC loss is huge but finite, a gradient
spike. SimpleDataSet also stats every image at build time and drops the missing ones
('missing_image', one warning). Images are read lazily in `load`; one that cannot be read then
raises `BadSample` (the pipeline substitutes another sample and counts it).

- SimpleDataSet: PaddleOCR label files, `rel/path<delimiter>label` per line.
- LMDBDataSet: every directory under `data_dir` holding a `data.mdb`, keys `num-samples`,
  `image-%09d`, `label-%09d` (1-based), as in PaddleOCR / deep-text-recognition-benchmark.
- SynthTextLine: text lines rendered on the fly (jaxocr/data/synth.py).
- SynthSceneWords: word crops cut from synthetic scenes as the det -> rec system cuts them
  (jaxocr/data/synth_words.py).
- SynthTextScene: detection scenes (jaxocr/data/synth_scenes.py).
- COCODataSet / SynthShapes: COCO-format object detection (jaxocr/data/coco.py, synth_shapes.py).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from jaxocr.config import ConfigError
from jaxocr.data.charset import UNKNOWN_CHARS_MODES, CharacterDict
from jaxocr.data.source_api import EveryEntryEachEpoch
from jaxocr.data.synth import MAX_DEFAULT_LEN, SynthTextLine
from jaxocr.data.transforms import BadSample

log = logging.getLogger("jaxocr")

KNOWN_SOURCES = ("SimpleDataSet", "LMDBDataSet", "TFDSDataSet", "SynthTextLine",
                 "SynthSceneWords", "SynthTextScene", "COCODataSet", "SynthShapes")
SYNTH_DEFAULT_SAMPLES = {"train": 10000, "eval": 1000}
EVAL_SEED_OFFSET = 1_000_003  # the default synthetic Eval set differs from the Train set
STAT_THREADS = 32    # image existence checks are I/O-bound (network file systems): many threads
STAT_CHUNK = 1024    # paths per task, so the pool's overhead is per chunk, not per path
MISSING_EXAMPLES = 5


class DatasetError(ValueError):
    """The data itself cannot be used (a corrupt or truncated LMDB): one line, no traceback."""


def _inside(root: str, rel: str) -> bool:
    """Whether `rel`, joined to `root`, stays under it (lexically: symlinked folders inside
    `root` may point anywhere)."""
    root = os.path.abspath(root)
    full = os.path.abspath(os.path.join(root, rel))
    return full == root or full.startswith(root.rstrip(os.sep) + os.sep)


def ctc_frames_needed(ids) -> int:
    """Output frames CTC needs to emit `ids`: one per id, plus a blank between equal neighbours."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)


class LabelFilter:
    """The build-time label rule of one source (see the module docstring); counts what it did.
    `filter(label)` is True when the sample is kept."""

    def __init__(self, charset: CharacterDict, max_text_length: int, unknown_chars: str = "skip",
                 max_ctc_steps: int | None = None):
        if unknown_chars not in UNKNOWN_CHARS_MODES:
            raise ValueError(f"unknown_chars must be one of {', '.join(UNKNOWN_CHARS_MODES)}, "
                             f"got {unknown_chars!r}")
        self.charset = charset
        self.max_text_length = int(max_text_length)
        self.unknown_chars = unknown_chars
        self.max_ctc_steps = None if max_ctc_steps is None else int(max_ctc_steps)
        self.dropped: Counter = Counter()
        self.chars_removed = 0
        self.removed_chars: Counter = Counter()

    def __call__(self, label: str) -> bool:
        cs = self.charset
        ids, problem = cs.encode_label(label, self.max_text_length, self.unknown_chars)
        if problem is None and self.max_ctc_steps is not None \
                and ctc_frames_needed(ids) > self.max_ctc_steps:
            problem = "too_long_for_ctc"
        if problem is not None:
            self.dropped[problem] += 1
            return False
        if len(ids) < len(cs.normalize(label)):
            self.chars_removed += 1
            self.removed_chars.update(cs.unknown_chars(label))
        return True


class DetLabelFilter:
    """The build-time rule for PaddleOCR det labels (`[{"transcription", "points"}, ...]`
    JSON): a line that is not such a list is 'malformed', an empty list 'no_text' (PaddleOCR's
    DetLabelEncode returns None for it and its loader draws another sample)."""

    def __init__(self):
        self.dropped: Counter = Counter()
        self.chars_removed = 0
        self.removed_chars: Counter = Counter()

    def __call__(self, label: str) -> bool:
        try:
            items = json.loads(label)
            ok = isinstance(items, list) and all(
                isinstance(it, dict) and "points" in it for it in items)
        except ValueError:
            ok = False
        if not ok:
            self.dropped["malformed"] += 1
            return False
        if not items:
            self.dropped["no_text"] += 1
            return False
        return True


def missing_files(data_dir: str, rel_paths, threads: int = STAT_THREADS) -> set[str]:
    """The distinct paths of `rel_paths` (relative to data_dir) that are not regular files,
    checked with a thread pool, each task a chunk of STAT_CHUNK paths."""
    unique = list(dict.fromkeys(rel_paths))

    def check(chunk):
        join, isfile = os.path.join, os.path.isfile
        return [rel for rel in chunk if not isfile(join(data_dir, rel))]

    chunks = [unique[k:k + STAT_CHUNK] for k in range(0, len(unique), STAT_CHUNK)]
    missing: set[str] = set()
    if len(chunks) <= 1 or threads <= 1:
        for chunk in chunks:
            missing.update(check(chunk))
        return missing
    with ThreadPoolExecutor(max_workers=min(threads, len(chunks)),
                            thread_name_prefix="jaxocr-stat") as pool:
        for found in pool.map(check, chunks):
            missing.update(found)
    return missing


class SimpleDataSet:
    """PaddleOCR label files. Entries are the usable lines of every file, file by file in line
    order (raw index = position in `paths` / `labels`). With `ratio_list`, each epoch uses
    round(n_f * ratio_f) entries of file f (n_f: its usable entries), drawn afresh per epoch."""

    def __init__(self, data_dir: str, label_file_list, charset: CharacterDict,
                 max_text_length: int, seed: int = 0, ratio_list=1.0, delimiter: str = "\t",
                 unknown_chars: str = "skip", max_ctc_steps: int | None = None,
                 label_filter=None):
        """`label_filter`: the rule deciding which lines are kept (a LabelFilter by default;
        DetLabelFilter for detection labels)."""
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

        keep = label_filter or LabelFilter(charset, max_text_length, unknown_chars, max_ctc_steps)
        dropped = keep.dropped
        paths: list[str] = []
        labels: list[str] = []
        counts = []
        malformed, outside = [], []  # (file:line, why) and paths, the first few shown
        for path in files:
            before = len(paths)
            with open(path, "rb") as f:
                lines = f.read().splitlines()
            for lineno, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    dropped["malformed"] += 1
                    malformed.append(f"{path}:{lineno} (not UTF-8)")
                    continue
                parts = line.split(delimiter)
                if len(parts) < 2 or not parts[0]:
                    dropped["malformed"] += 1
                    malformed.append(f"{path}:{lineno} (no {delimiter!r} between image path "
                                     f"and label)")
                    continue
                if not _inside(self.data_dir, parts[0]):
                    dropped["outside_data_dir"] += 1
                    outside.append(f"{path}:{lineno} {parts[0]}")
                    continue
                # PaddleOCR takes the second field as the label (a third one is ignored)
                if keep(parts[1]):
                    paths.append(parts[0])
                    labels.append(parts[1])
            counts.append(len(paths) - before)
        if malformed:
            log.warning("SimpleDataSet: %d malformed label line(s) skipped, e.g. %s",
                        len(malformed), "; ".join(malformed[:MISSING_EXAMPLES]))
        if outside:
            log.warning("SimpleDataSet: %d sample(s) skipped, their image path leads outside "
                        "data_dir %s (an absolute path or '..'; jaxocr reads images only under "
                        "data_dir: set it to a folder that holds them), e.g. %s", len(outside),
                        self.data_dir, "; ".join(outside[:MISSING_EXAMPLES]))

        absent = missing_files(self.data_dir, paths)
        if absent:
            ok = [p not in absent for p in paths]
            file_of = np.repeat(np.arange(len(files)), counts)[np.asarray(ok, bool)]
            counts = np.bincount(file_of, minlength=len(files)).tolist()
            n_missing = len(paths) - len(file_of)
            dropped["missing_image"] += n_missing
            shown = [os.path.join(self.data_dir, p) for p in paths if p in absent]
            log.warning("SimpleDataSet: %d sample(s) dropped, their image file does not exist "
                        "(%d distinct path(s)), e.g. %s", n_missing, len(absent),
                        ", ".join(shown[:MISSING_EXAMPLES]))
            paths = [p for p, k in zip(paths, ok) if k]
            labels = [lab for lab, k in zip(labels, ok) if k]

        self.paths, self.labels = paths, labels
        self.label_files = files
        self.ratios = ratios
        self.seed = int(seed)
        self.file_sizes = [int(c) for c in counts]                 # usable entries per file
        self.file_starts = np.concatenate([[0], np.cumsum(self.file_sizes)]).astype(np.int64)
        self.per_epoch = [round(n * r) for n, r in zip(self.file_sizes, ratios)]
        self.dropped: dict[str, int] = dict(dropped)
        self.chars_removed = keep.chars_removed
        self.removed_chars = keep.removed_chars

    @property
    def num_entries(self) -> int:
        return len(self.paths)

    def __len__(self) -> int:
        """Samples per epoch: sum over files of round(usable entries * ratio)."""
        return sum(self.per_epoch)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Ascending raw indices of the epoch: all of a file with ratio 1, else round(n * ratio)
        of its n entries drawn without replacement from (seed, epoch, file index) alone."""
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        parts = []
        for f, (n, k) in enumerate(zip(self.file_sizes, self.per_epoch)):
            start = self.file_starts[f]
            if k == n:
                parts.append(np.arange(start, start + n, dtype=np.int64))
            elif k > 0:
                rng = np.random.default_rng([self.seed, epoch, f])
                parts.append(start + np.sort(rng.choice(n, size=k, replace=False)))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def load(self, i: int) -> dict:
        """Sample at raw index i (0 <= i < num_entries; see epoch_indices)."""
        path = os.path.join(self.data_dir, self.paths[i])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BadSample(f"cannot read image {path}: {e.strerror or e}") from None
        return {"image_bytes": data, "label": self.labels[i], "img_path": path}

    def __repr__(self) -> str:
        return (f"SimpleDataSet({len(self)} samples per epoch of {self.num_entries} from "
                f"{self.label_files}, dropped {self.dropped})")


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
                env = _ENVS[path] = _open_lmdb(path)
    return env


def _open_lmdb(path: str):
    """Open read-only, refusing a truncated data.mdb: LMDB maps the file, and reading a page
    past its end kills the process with SIGBUS rather than raising."""
    import lmdb
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False,
                        max_readers=512, subdir=True)
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    except lmdb.Error as e:
        raise DatasetError(f"LMDB {path}: cannot be opened ({str(e).split(': ')[-1]}): a "
                           f"corrupt data.mdb? rebuild it, or move it out of data_dir") from None
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    if size < needed:
        env.close()
        raise DatasetError(f"LMDB {path}: data.mdb is truncated ({size} bytes of the {needed} "
                           f"its header records; an interrupted copy?): copy or rebuild it")
    return env


def find_lmdb_dirs(data_dir: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(data_dir, followlinks=True):
        dirs.sort()
        if "data.mdb" in files:
            found.append(os.path.realpath(root))
    return found



def _scan_labels(path: str, keep: LabelFilter):
    """(num-samples, bool[n+1] of usable 1-based keys) of one LMDB; problems counted by `keep`.
    Labels are walked with one cursor in key order (fast even for millions)."""
    import lmdb
    try:
        return _scan(lmdb_env(path), path, keep)
    except lmdb.Error as e:
        raise DatasetError(f"LMDB {path}: unreadable while reading its labels ({e}): a corrupt "
                           f"data.mdb? rebuild it, or move it out of data_dir") from None


def _scan(env, path: str, keep: LabelFilter):
    with env.begin(buffers=False) as txn:
        raw = txn.get(b"num-samples")
        try:
            n = int(raw.decode())
        except (AttributeError, UnicodeDecodeError, ValueError):
            raise DatasetError(f"LMDB {path}: no valid 'num-samples' key ({raw!r}); PaddleOCR's "
                               f"LMDBs hold num-samples, image-%09d and label-%09d") from None
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
                keep.dropped["malformed"] += 1
                continue
            if keep(label):
                ok[idx] = True
    return n, ok


class LMDBDataSet(EveryEntryEachEpoch):
    """Read-only LMDBs. Environments are opened once per process (again after a fork, lazily)
    and shared by its threads and sources; each `load` reads in its own transaction. Only
    paths and index arrays are kept (labels are re-read in `load`), so it pickles small.
    Raw index i is the i-th usable key, LMDB by LMDB (sorted paths) in key order."""

    def __init__(self, data_dir: str, charset: CharacterDict, max_text_length: int,
                 unknown_chars: str = "skip", max_ctc_steps: int | None = None,
                 label_filter=None):
        if not data_dir or not os.path.isdir(data_dir):
            raise FileNotFoundError(f"LMDBDataSet data_dir not found: {data_dir}")
        self.data_dir = os.fspath(data_dir)
        self.dirs = find_lmdb_dirs(self.data_dir)
        if not self.dirs:
            raise FileNotFoundError(f"LMDBDataSet: no LMDB (a directory with data.mdb) under "
                                    f"{self.data_dir}")
        keep = label_filter or LabelFilter(charset, max_text_length, unknown_chars, max_ctc_steps)
        env_ids, key_ids = [], []
        self.sizes = []
        for k, d in enumerate(self.dirs):
            n, ok = _scan_labels(d, keep)
            present = np.flatnonzero(ok)
            env_ids.append(np.full(len(present), k, np.int32))
            key_ids.append(present.astype(np.int64))
            self.sizes.append(n)
        self._env_of = np.concatenate(env_ids)
        self._key_of = np.concatenate(key_ids)
        dropped = keep.dropped
        total = sum(self.sizes)
        unaccounted = total - len(self._key_of) - sum(dropped.values())  # no label-N key
        if unaccounted > 0:
            dropped["missing_label"] += unaccounted
        self.dropped: dict[str, int] = dict(dropped)
        self.chars_removed = keep.chars_removed
        self.removed_chars = keep.removed_chars

    def __len__(self) -> int:
        return len(self._key_of)

    def load(self, i: int) -> dict:
        import lmdb
        k, idx = int(self._env_of[i]), int(self._key_of[i])
        try:
            with lmdb_env(self.dirs[k]).begin(buffers=False) as txn:
                image = txn.get(b"image-%09d" % idx)
                label = txn.get(b"label-%09d" % idx)
        except lmdb.Error as e:
            raise BadSample(f"LMDB {self.dirs[k]}: sample {idx} unreadable: {e}") from None
        if not image or label is None:
            raise BadSample(f"LMDB {self.dirs[k]}: no image-{idx:09d} or label-{idx:09d}")
        return {"image_bytes": image, "label": label.decode("utf-8", "replace"),
                "img_path": f"{self.dirs[k]}#{idx}"}

    def __repr__(self) -> str:
        return (f"LMDBDataSet({len(self)} samples in {len(self.dirs)} LMDBs under "
                f"{self.data_dir}, dropped {self.dropped})")


class SynthSource(EveryEntryEachEpoch, SynthTextLine):
    """SynthTextLine as a source: every label is drawn from the dictionary, nothing is dropped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.chars_removed = 0
        self.removed_chars: Counter = Counter()


# ----------------------------------------------------------------------------------------------
def _log_summary(src, mode: str, dictionary: bool = True):
    section = f"{mode.capitalize()}.dataset"
    per_epoch, entries = len(src), src.num_entries
    size = (f"{per_epoch} samples" if per_epoch == entries
            else f"{per_epoch} samples per epoch (of {entries}, ratio_list)")
    removed = f"; {src.chars_removed} kept with characters outside the dictionary removed"
    if src.removed_chars:
        common = src.removed_chars.most_common(10)
        removed += " (" + ", ".join(f"{c!r} in {n}" for c, n in common) + \
            (", ..." if len(src.removed_chars) > len(common) else "") + ")"
    dropped = ", ".join(f"{k}={v}" for k, v in sorted(src.dropped.items())) or "none"
    if not dictionary:  # detection labels: no character dictionary
        removed = ""
    log.info("%s %s: %s%s; dropped: %s", section, type(src).__name__, size, removed, dropped)


def build_source(dataset_cfg: dict, mode: str, charset: CharacterDict, global_cfg: dict,
                 seed: int, max_ctc_steps: int | None = None, label_filter=None):
    """The dataset of a `Train.dataset` / `Eval.dataset` config section; mode 'train'|'eval'.

    `label_filter`: the task's rule for label-file lines (DetLabelFilter for detection);
    recognition's LabelFilter by default.
    `max_ctc_steps`: the model's CTC output frames T; in train mode labels needing more are
    dropped ('too_long_for_ctc'); evaluation keeps them (they are simply recognised wrongly).
    Logs one line: samples, labels kept with characters removed, drops by reason."""
    try:
        return _build_source(dataset_cfg, mode, charset, global_cfg, seed, max_ctc_steps,
                             label_filter)
    except (ConfigError, DatasetError):
        raise
    except ValueError as e:  # a bad option of the section: one line naming it
        raise ConfigError(f"{str(mode).capitalize()}.dataset ({dataset_cfg.get('name')}): "
                          f"{e}") from None


def _build_source(dataset_cfg: dict, mode: str, charset: CharacterDict, global_cfg: dict,
                  seed: int, max_ctc_steps: int | None = None, label_filter=None):
    name = dataset_cfg.get("name")
    mode = str(mode).lower()
    max_len = int(global_cfg.get("max_text_length", 25))
    unknown = dataset_cfg.get("unknown_chars", "skip")
    if unknown not in UNKNOWN_CHARS_MODES:
        raise ValueError(f"{mode.capitalize()}.dataset.unknown_chars must be one of "
                         f"{', '.join(UNKNOWN_CHARS_MODES)}, got {unknown!r}")
    ctc_steps = int(max_ctc_steps) if mode == "train" and max_ctc_steps is not None else None
    if name == "SimpleDataSet":
        src = SimpleDataSet(dataset_cfg.get("data_dir"), dataset_cfg.get("label_file_list"),
                            charset, max_len, seed=seed,
                            ratio_list=dataset_cfg.get("ratio_list", 1.0),
                            delimiter=dataset_cfg.get("delimiter", "\t"),
                            unknown_chars=unknown, max_ctc_steps=ctc_steps,
                            label_filter=label_filter)
    elif name == "SynthTextScene":
        from jaxocr.data.synth_scenes import SynthTextScene
        src = _synthetic(SynthTextScene, SCENE_OPTIONS, dataset_cfg, mode, seed)
    elif name == "COCODataSet":
        from jaxocr.data.coco import COCODataSet
        options = {k: dataset_cfg[k] for k in COCO_OPTIONS if dataset_cfg.get(k) is not None}
        src = COCODataSet(seed=seed, **options)
    elif name == "SynthShapes":
        from jaxocr.data.synth_shapes import SynthShapes
        src = _synthetic(SynthShapes, SHAPES_OPTIONS, dataset_cfg, mode, seed)
    elif name == "TFDSDataSet":
        from jaxocr.data.tfds_data import TFDSDataSet
        if not dataset_cfg.get("tfds_name"):
            raise ConfigError(f"{mode.capitalize()}.dataset.tfds_name: the TFDS dataset's name "
                              f"(a folder under data_dir) is required")
        keep = label_filter or LabelFilter(charset, max_len, unknown, ctc_steps)
        src = TFDSDataSet(dataset_cfg["tfds_name"], dataset_cfg.get("data_dir"),
                          dataset_cfg.get("split", "train" if mode == "train" else "test"),
                          keep, image_key=dataset_cfg.get("image_key", "image"),
                          label_key=dataset_cfg.get("label_key", "label"))
    elif name == "LMDBDataSet":
        src = LMDBDataSet(dataset_cfg.get("data_dir"), charset, max_len, unknown_chars=unknown,
                          max_ctc_steps=ctc_steps, label_filter=label_filter)
    elif name in ("SynthTextLine", "SynthSceneWords"):
        ds_seed = dataset_cfg.get("seed")
        if ds_seed is None:
            ds_seed = int(seed) + (EVAL_SEED_OFFSET if mode == "eval" else 0)
        max_text = dataset_cfg.get("max_len")
        max_text = min(MAX_DEFAULT_LEN, max_len) if max_text is None else int(max_text)
        if max_text > max_len:
            raise ValueError(f"{name}: max_len {max_text} exceeds Global.max_text_length "
                             f"{max_len}")
        if ctc_steps is not None and 2 * max_text - 1 > ctc_steps:
            log.warning("%s: max_len %d may draw labels needing up to %d CTC frames, more than "
                        "the model's %d (rendered on the fly, they cannot be dropped at start)",
                        name, max_text, 2 * max_text - 1, ctc_steps)
        num = dataset_cfg.get("num_samples")
        if num is None:
            num = SYNTH_DEFAULT_SAMPLES.get(mode, SYNTH_DEFAULT_SAMPLES["train"])
        common = dict(num_samples=int(num), seed=int(ds_seed),
                      min_len=int(dataset_cfg.get("min_len", 1)), max_len=max_text,
                      fonts=dataset_cfg.get("fonts"))
        if name == "SynthTextLine":
            src = SynthSource(charset, mixed_case=dataset_cfg.get("mixed_case"), **common)
        else:
            from jaxocr.data.synth_words import SynthSceneWords
            scene = {k: dataset_cfg[k] for k in WORD_SCENE_OPTIONS
                     if dataset_cfg.get(k) is not None}
            src = SynthSceneWords(charset, **common, **scene)
    else:
        raise ConfigError(f"unknown dataset name {name!r}; known: {', '.join(KNOWN_SOURCES)}")
    _log_summary(src, mode, dictionary=label_filter is None and name not in DETECTION_SOURCES)
    return src


DETECTION_SOURCES = ("SynthTextScene", "COCODataSet", "SynthShapes")  # no character dictionary
COCO_OPTIONS = ("dataset_dir", "image_dir", "anno_path", "data_fields", "sample_num",
                "load_crowd", "allow_empty", "empty_ratio", "repeat", "clip_bbox")
SHAPES_OPTIONS = ("image_size", "num_classes", "objects_per_image", "object_size",
                  "min_visible", "min_contrast", "noise_prob")


WORD_SCENE_OPTIONS = ("image_size", "words_per_image", "font_size", "max_angle")
SCENE_OPTIONS = ("image_size", "words_per_image", "fonts", "dont_care_prob", "word_len",
                 "font_size", "max_angle")


def _synthetic(cls, option_names, dataset_cfg: dict, mode: str, seed: int):
    """A built-in generator with the section's seed (an Eval set apart from the Train set by
    default), sample count and options."""
    ds_seed = dataset_cfg.get("seed")
    if ds_seed is None:
        ds_seed = int(seed) + (EVAL_SEED_OFFSET if mode == "eval" else 0)
    num = dataset_cfg.get("num_samples")
    if num is None:
        num = SYNTH_DEFAULT_SAMPLES.get(mode, SYNTH_DEFAULT_SAMPLES["train"])
    options = {k: dataset_cfg[k] for k in option_names if dataset_cfg.get(k) is not None}
    return cls(num_samples=int(num), seed=int(ds_seed), **options)
