"""Small on-disk detection datasets for tests and benchmarks, rendered with SynthTextScene.

    label_file = write_det_label_file_dataset(tmp_path, 16, seed=0, corrupt=2)
    # -> tmp_path/label.txt with 16 lines "images/img_000000.png\t[{"transcription": ...,
    #    "points": [[x, y], ...]}, ...]" (PaddleOCR's det label); 2 of the PNGs are random bytes.
    Train.dataset = {name: SimpleDataSet, data_dir: tmp_path, label_file_list: [label_file]}

Scene i of the file is `SynthTextScene(n, seed, **scene_kwargs).load(i)` exactly (PNG is
lossless): image and label. A corrupt entry keeps its label line (as in a damaged real dataset).
"""
from __future__ import annotations

import cv2
import numpy as np

from jaxocr.data.fixtures import write_label_file
from jaxocr.data.synth_scenes import SynthTextScene


def write_det_label_file_dataset(directory, n: int, seed: int, corrupt: int = 0, *,
                                 label_name: str = "label.txt", image_dir: str = "images",
                                 ext: str = "png", **scene_kwargs) -> str:
    """Writes `n` scenes as images under directory/image_dir and a PaddleOCR det label file
    directory/label_name (`image_dir/img_NNNNNN.<ext>\\t<det JSON>` per line); returns the label
    file's path. `corrupt` of the images (at seeded positions) are random bytes that no decoder
    reads. `ext`: 'png' (lossless: pixels equal the source's) or 'jpg'. `scene_kwargs` go to
    SynthTextScene (image_size, words_per_image, dont_care_prob, ...)."""
    n, corrupt = int(n), int(corrupt)
    if not 0 <= corrupt <= n:
        raise ValueError(f"need 0 <= corrupt <= n, got corrupt={corrupt} for n={n}")
    if ext not in ("png", "jpg"):
        raise ValueError(f"ext must be 'png' or 'jpg', got {ext!r}")
    src = SynthTextScene(num_samples=n, seed=seed, **scene_kwargs)
    corrupt_ids = set(np.random.default_rng([int(seed), 7]).permutation(n)[:corrupt].tolist())
    junk = np.random.default_rng([int(seed), 8])

    def entries():
        for i in range(n):
            sample = src.load(i)
            if i in corrupt_ids:
                # random bytes after 00 FF, which starts no image format OpenCV (or PIL) reads
                data = junk.integers(0, 256, size=int(junk.integers(16, 256)), dtype=np.uint8)
                data[:2] = (0x00, 0xFF)
                data = data.tobytes()
            else:
                ok, buf = cv2.imencode("." + ext, sample["image"])
                if not ok:
                    raise RuntimeError(f"cv2.imencode failed for scene {i}")
                data = buf.tobytes()
            yield f"{image_dir}/img_{i:06d}.{ext}", data, sample["label"]

    return write_label_file(directory, entries(), label_name)
