"""The built-in synthetic detection scenes (jaxocr/data/synth_scenes.py) and the det label-file
writer (jaxocr/data/det_fixtures.py): determinism across processes, exact word polygons (every
ink pixel inside, polygon tight on the ink), PaddleOCR 2.7 det label format, don't-care share,
pickling, label-file round trip."""
import json
import math
import multiprocessing as mp
import os
import pickle
import zlib
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
import pytest

from jaxocr.data.det_fixtures import write_det_label_file_dataset
from jaxocr.data.synth_scenes import SynthTextScene

SMALL = dict(image_size=(256, 320), words_per_image=(3, 8), font_size=(10, 40))


def det_label_encode(label: str):
    """PaddleOCR 2.7 DetLabelEncode (ppocr/data/imaug/label_ops.py), restated: json.loads, the
    'points' and 'transcription' of every box, ignore tag for '*' / '###', None without boxes;
    boxes padded to the most points (expand_points_num) then float32."""
    label = json.loads(label)
    boxes, txts, tags = [], [], []
    for item in label:
        boxes.append(item["points"])
        txts.append(item["transcription"])
        tags.append(item["transcription"] in ["*", "###"])
    if not boxes:
        return None
    n = max(len(b) for b in boxes)
    boxes = [b + [b[-1]] * (n - len(b)) for b in boxes]
    return {"polys": np.array(boxes, dtype=np.float32), "texts": txts,
            "ignore_tags": np.array(tags, dtype=np.bool_)}


def inside(quad, xs, ys, tol=1e-6):
    """Points (xs, ys) inside the convex quad, clockwise on screen (written here, independently
    of the module's own helper)."""
    ok = np.ones(len(xs), bool)
    for k in range(4):
        a, b = quad[k], quad[(k + 1) % 4]
        e = b - a
        d = (e[0] * (ys - a[1]) - e[1] * (xs - a[0])) / np.hypot(*e)
        ok &= d >= -tol
    return ok


def edge_distances(quad, xs, ys):
    """(4, N) signed distances of points to the quad's edge lines (positive inside)."""
    out = []
    for k in range(4):
        a, b = quad[k], quad[(k + 1) % 4]
        e = b - a
        out.append((e[0] * (ys - a[1]) - e[1] * (xs - a[0])) / np.hypot(*e))
    return np.array(out)


def shoelace(q):
    x, y = q[:, 0], q[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def digest(sample):
    return zlib.crc32(sample["image"].tobytes()), sample["label"], sample["image"].shape


def _digests_in_child(src, ids):
    return [digest(src.load(i)) for i in ids]


def test_source_api():
    src = SynthTextScene(7, seed=3, **SMALL)
    assert len(src) == src.num_entries == 7
    np.testing.assert_array_equal(src.epoch_indices(0), np.arange(7))
    np.testing.assert_array_equal(src.epoch_indices(5), np.arange(7))
    assert src.epoch_indices(1).dtype == np.int64
    assert src.dropped == {} and src.chars_removed == 0 and not src.removed_chars
    s = src.load(4)
    assert set(s) == {"image", "label", "img_path"} and s["img_path"] == "synth://4"
    assert s["image"].dtype == np.uint8 and s["image"].shape == (256, 320, 3)
    assert s["image"].flags["C_CONTIGUOUS"]
    with pytest.raises(IndexError):
        src.load(7)
    ranged = SynthTextScene(12, seed=0, image_size=((200, 300), (240, 260)),
                            words_per_image=(1, 3))
    shapes = {ranged.load(i)["image"].shape for i in range(12)}
    assert len(shapes) > 1
    assert all(200 <= h <= 300 and 240 <= w <= 260 and c == 3 for h, w, c in shapes)
    assert SynthTextScene(1, image_size=128).load(0)["image"].shape == (128, 128, 3)
    for bad in (dict(image_size=(32, 32)), dict(words_per_image=(5, 2)),
                dict(dont_care_prob=1.5), dict(max_angle=60), dict(num_samples=-1)):
        with pytest.raises(ValueError):
            SynthTextScene(**{"num_samples": 1, **bad})


def test_deterministic_per_seed_and_index_in_any_process():
    a = SynthTextScene(40, seed=11, **SMALL)
    b = SynthTextScene(40, seed=11, **SMALL)
    ids = [9, 2, 31, 2]
    forward = [digest(a.load(i)) for i in ids]
    backward = [digest(b.load(i)) for i in reversed(ids)][::-1]
    assert forward == backward
    assert forward[1] == forward[3]
    assert digest(a.load(9)) != digest(a.load(2))
    assert digest(SynthTextScene(40, seed=12, **SMALL).load(9)) != forward[0]
    # a fresh interpreter (spawn) with a pickled copy renders the same bytes
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        assert pool.submit(_digests_in_child, a, ids).result(timeout=120) == forward


def test_pickles_small_and_equal():
    src = SynthTextScene(100, seed=5, **SMALL)
    before = pickle.dumps(src)
    first = digest(src.load(3))  # opens fonts in this thread: not part of the pickle
    after = pickle.dumps(src)
    assert len(before) < 4096 and len(after) == len(before)
    copy = pickle.loads(after)
    assert digest(copy.load(3)) == first
    assert repr(copy).startswith("SynthTextScene(100 scenes, seed 5")


@pytest.mark.parametrize("kwargs", [
    dict(seed=0),                                              # the defaults, 640 x 640
    dict(seed=1, perspective_prob=1.0, dont_care_prob=0.5, **SMALL),
    dict(seed=2, horizontal_prob=0.0, perspective_prob=0.0, gap=0, **SMALL),
])
def test_polygons_enclose_the_ink_exactly(kwargs):
    src = SynthTextScene(4, **kwargs)
    n_words = n_persp = 0
    clipped = ink = 0.0
    for i in range(len(src)):
        s = src.scene(i, debug=True)
        h, w = s["image"].shape[:2]
        union = np.zeros((h, w), bool)
        label = json.loads(src.load(i)["label"])
        assert [e["points"] for e in label] == [wd["points"] for wd in s["words"]]
        yy, xx = np.mgrid[0:h, 0:w]
        for wd in s["words"]:
            q = np.asarray(wd["points"], np.float64)
            n_words += 1
            n_persp += wd["perspective"]
            # inside the image, clockwise on screen, convex, first point the word's top-left
            assert q.min() >= 0 and q[:, 0].max() <= w - 1 and q[:, 1].max() <= h - 1
            assert shoelace(q) > 0
            d = np.roll(q, -1, 0) - q
            assert np.all(d[:, 0] * np.roll(d, -1, 0)[:, 1] - d[:, 1] * np.roll(d, -1, 0)[:, 0] > 0)
            top, left = q[1] - q[0], q[3] - q[0]
            a_top = math.degrees(math.atan2(top[1], top[0]))
            a_left = math.degrees(math.atan2(left[1], left[0]))
            if wd["perspective"]:  # rotation up to 30 degrees plus the corner jitter's skew
                assert abs(a_top) < 45 and 30 < a_left < 150, (a_top, a_left)
            else:  # a rotated rectangle: reading direction within max_angle, right angles
                assert abs(a_top) <= src.max_angle + 0.1
                assert abs(a_left - a_top - 90) < 0.5
                np.testing.assert_allclose(q[2] - q[3], top, atol=0.03)
            # the word's own ink mask: every nonzero pixel (centre) inside its polygon ...
            x0, y0 = wd["origin"]
            ys, xs = np.nonzero(wd["alpha"] > 0)
            assert ys.size > 0
            xs, ys = xs + x0, ys + y0
            assert np.all(inside(q, xs.astype(float), ys.astype(float)))
            # ... and the polygon is the ink's box, not a loose hull: ink within 2 px of every
            # edge (bilinear rendering puts ink centres within ~0.7 px, 2 with perspective)
            dist = edge_distances(q, xs.astype(float), ys.astype(float))
            assert np.all(dist.min(axis=1) <= (2.0 if wd["perspective"] else 1.25)), dist.min(1)
            # the clip to the polygon removed only bilinear fringe: less than half an edge ink
            # pixel each (plus OpenCV's 1/32 px interpolation grid and the 0.01 px rounding)
            assert wd["clipped_max"] <= 0.5 + 1 / 32 + 0.02
            # in a band under 0.5 px wide along the edges: at most 0.25 per px of perimeter
            perimeter = float(np.sum(np.hypot(*(np.roll(q, -1, 0) - q).T)))
            assert wd["clipped_sum"] <= 0.25 * perimeter, (wd["clipped_sum"], perimeter)
            clipped += wd["clipped_sum"]
            ink += wd["ink_sum"]
            union |= inside(q, xx.ravel().astype(float),
                            yy.ravel().astype(float)).reshape(h, w)
        # nothing was drawn outside the polygons, and polygons never overlap
        changed = np.any(s["clean"] != s["background"], axis=-1)
        assert not np.any(changed & ~union)
        covered = np.zeros((h, w), np.int32)
        for wd in s["words"]:
            q = np.asarray(wd["points"])
            covered += inside(q, xx.ravel().astype(float), yy.ravel().astype(float)
                              ).reshape(h, w)
        assert covered.max() <= 1
    assert n_words >= 4 * 3
    assert clipped <= 0.02 * ink  # over all words: the fringe is a small part of the ink
    if kwargs.get("perspective_prob") == 1.0:
        assert n_persp >= n_words // 2


def test_label_is_paddleocr_det_json():
    src = SynthTextScene(10, seed=4, dont_care_prob=0.3, **SMALL)
    for i in range(len(src)):
        s = src.load(i)
        label = s["label"]
        assert "\n" not in label and "\t" not in label  # one field of one label-file line
        label.encode("utf-8")
        enc = det_label_encode(label)
        assert enc is not None  # never a scene without boxes (DetLabelEncode would drop it)
        polys = enc["polys"]
        assert polys.ndim == 3 and polys.shape[1:] == (4, 2)
        h, w = s["image"].shape[:2]
        assert polys[..., 0].min() >= 0 and polys[..., 0].max() <= w - 1
        assert polys[..., 1].min() >= 0 and polys[..., 1].max() <= h - 1
        for text, tag in zip(enc["texts"], enc["ignore_tags"]):
            assert isinstance(text, str) and text
            assert bool(tag) == (text == "###")
            assert " " not in text
        raw = json.loads(label)
        assert all(set(e) == {"transcription", "points"} for e in raw)


def test_dont_care_share():
    def share(p, n=30):
        src = SynthTextScene(n, seed=8, dont_care_prob=p, image_size=(200, 200),
                             words_per_image=(3, 6), font_size=(10, 30))
        tags = [t for i in range(n) for t in det_label_encode(src.load(i)["label"])["ignore_tags"]]
        return float(np.mean(tags)), len(tags)

    frac, count = share(0.3)
    assert count >= 80
    assert abs(frac - 0.3) < 0.1, frac
    assert share(0.0, 8)[0] == 0.0
    assert share(1.0, 8)[0] == 1.0


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_det_label_file_round_trip(tmp_path, ext):
    kw = dict(image_size=(160, 200), words_per_image=(2, 5), font_size=(10, 30))
    path = write_det_label_file_dataset(tmp_path, 6, seed=2, corrupt=2, ext=ext, **kw)
    assert path == os.path.join(tmp_path, "label.txt")
    src = SynthTextScene(6, seed=2, **kw)
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8").splitlines()
    assert len(lines) == 6
    unreadable = []
    for i, line in enumerate(lines):
        rel, label = line.split("\t")  # SimpleDataSet: delimiter '\t', two fields
        assert rel == f"images/img_{i:06d}.{ext}"
        ref = src.load(i)
        assert label == ref["label"]
        assert det_label_encode(label) is not None
        with open(os.path.join(tmp_path, rel), "rb") as f:
            data = f.read()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            unreadable.append(i)
            continue
        assert img.shape == ref["image"].shape
        if ext == "png":
            np.testing.assert_array_equal(img, ref["image"])
        else:
            assert np.abs(img.astype(int) - ref["image"]).mean() < 8
    assert len(unreadable) == 2
    again = write_det_label_file_dataset(tmp_path / "b", 6, seed=2, corrupt=2, ext=ext, **kw)
    assert open(again, "rb").read() == open(path, "rb").read()
    with pytest.raises(ValueError):
        write_det_label_file_dataset(tmp_path / "c", 2, seed=0, corrupt=3)
