"""Small on-disk recognition datasets for tests and benchmarks, rendered with SynthTextLine.

    label_file = write_label_file_dataset(tmp_path, 64, "0123456789abcdefghijklmnopqrstuvwxyz",
                                          seed=0, corrupt=2, bad_labels=3)
    # -> tmp_path/label.txt with 64 lines "images/img_000000.png\t<label>"; 2 of the PNGs are
    #    random bytes, 3 labels contain a character outside charset_text.
    Train.dataset = {name: SimpleDataSet, data_dir: tmp_path, label_file_list: [label_file]}
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from jaxocr.data.synth import MAX_DEFAULT_LEN, SynthTextLine

OUT_OF_DICT_CANDIDATES = "#@%&$§¤~^"


def _plan(n: int, seed: int, corrupt: int, bad_labels: int, charset_text: str):
    if corrupt < 0 or bad_labels < 0 or corrupt + bad_labels > n:
        raise ValueError(f"need 0 <= corrupt + bad_labels <= n, got {corrupt} + {bad_labels} "
                         f"for n={n}")
    outsider = next((c for c in OUT_OF_DICT_CANDIDATES if c not in charset_text), None)
    if bad_labels and outsider is None:
        raise ValueError("no out-of-dictionary character available for bad labels")
    order = np.random.default_rng([int(seed), 7]).permutation(n)
    corrupt_ids = set(order[:corrupt].tolist())
    bad_ids = set(order[corrupt:corrupt + bad_labels].tolist())
    return corrupt_ids, bad_ids, outsider


def _samples(n, charset_text, seed, corrupt, bad_labels, min_len, max_len):
    """Yields (i, encoded PNG bytes or random junk, label)."""
    corrupt_ids, bad_ids, outsider = _plan(n, seed, corrupt, bad_labels, charset_text)
    synth = SynthTextLine(charset_text, num_samples=n, seed=seed, min_len=min_len,
                          max_len=max_len, mixed_case=False)
    junk = np.random.default_rng([int(seed), 8])
    for i in range(n):
        image, label = synth.render(i)
        if i in corrupt_ids:
            data = junk.integers(0, 256, size=int(junk.integers(16, 256)),
                                 dtype=np.uint8).tobytes()
        else:
            ok, buf = cv2.imencode(".png", image)
            assert ok
            data = buf.tobytes()
        if i in bad_ids:
            label = label[: len(label) // 2] + outsider + label[len(label) // 2:]
        yield i, data, label


def write_label_file_dataset(dir, n: int, charset_text: str, seed: int, corrupt: int = 0,
                             bad_labels: int = 0, *, min_len: int = 1,
                             max_len: int = MAX_DEFAULT_LEN, label_name: str = "label.txt",
                             image_dir: str = "images") -> str:
    """Writes `n` PNGs under dir/image_dir and a PaddleOCR label file dir/label_name with one
    `image_dir/img_NNNNNN.png\\tlabel` line each; returns the label file's path.

    `corrupt` of the images are random bytes (undecodable) and `bad_labels` labels contain one
    character outside `charset_text` (at seeded, disjoint positions). Labels are drawn from
    `charset_text` exactly as rendered (no case mixing).
    """
    samples = _samples(n, charset_text, seed, corrupt, bad_labels, min_len, max_len)
    return write_label_file(dir, ((f"{image_dir}/img_{i:06d}.png", data, label)
                                  for i, data, label in samples), label_name)


def write_label_file(directory, entries, label_name: str = "label.txt") -> str:
    """Writes each (relative image path, encoded bytes, label) and the PaddleOCR label file
    `rel<TAB>label` naming them; returns its path."""
    directory = os.fspath(directory)
    lines = []
    for rel, data, label in entries:
        os.makedirs(os.path.dirname(os.path.join(directory, rel)), exist_ok=True)
        with open(os.path.join(directory, rel), "wb") as f:
            f.write(data)
        lines.append(f"{rel}\t{label}\n")
    path = os.path.join(directory, label_name)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return path


def write_lmdb_dataset(dir, n: int, charset_text: str, seed: int, corrupt: int = 0,
                       bad_labels: int = 0, *, min_len: int = 1,
                       max_len: int = MAX_DEFAULT_LEN) -> list[str]:
    """The same samples as write_label_file_dataset, as one LMDB in `dir` (keys num-samples,
    image-%09d, label-%09d, 1-based). Returns the labels in key order."""
    import lmdb

    dir = os.fspath(dir)
    os.makedirs(dir, exist_ok=True)
    labels = []
    env = lmdb.open(dir, map_size=1 << 28)
    with env.begin(write=True) as txn:
        for i, data, label in _samples(n, charset_text, seed, corrupt, bad_labels, min_len,
                                       max_len):
            txn.put(b"image-%09d" % (i + 1), data)
            txn.put(b"label-%09d" % (i + 1), label.encode("utf-8"))
            labels.append(label)
        txn.put(b"num-samples", str(n).encode())
    env.close()
    return labels
