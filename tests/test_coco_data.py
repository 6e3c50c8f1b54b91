"""The PP-YOLOE data side: COCODataSet (PaddleDetection release/2.7.1 filtering), the built-in
SynthShapes COCO-format data, PaddleDetection's reader transforms (boxes kept on their objects
through every op), BatchRandomResize's step-seeded choice, PadGT, and COCOMetric
(pycocotools)."""
import json
import os
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest

from jaxocr.data.coco import COCODataSet
from jaxocr.data.synth_shapes import CLASS_NAMES, SynthShapes, write_coco
from jaxocr.data.transforms import BadSample
from jaxocr.data.transforms.ppdet_batch_operators import (BatchRandomResize, PadGT,
                                                         build_batch_transforms)
from jaxocr.data.transforms.ppdet_operators import (INTERPS, Decode, NormalizeImage, Permute,
                                                    RandomCrop, RandomDistort, RandomExpand,
                                                    RandomFlip, Resize, build_sample_transforms,
                                                    normalize_image)
from jaxocr.metrics.coco_metric import STAT_NAMES, COCOMetric

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(image_size=((96, 128), (112, 144)), objects_per_image=(1, 6), object_size=(6, 60))
PPYOLOE_SIZES = list(range(320, 769, 32))


def tight_box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


# ----------------------------------------------------------------------------------------------
# SynthShapes

def test_synth_shapes_deterministic_and_exact():
    src = SynthShapes(12, seed=3, num_classes=8, **SMALL)
    again = pickle.loads(pickle.dumps(SynthShapes(12, seed=3, num_classes=8, **SMALL)))
    assert len(pickle.dumps(src)) < 2000
    sizes = []
    for i in range(12):
        s = src.scene(i, debug=True)
        t = again.scene(i)
        assert np.array_equal(s["image"], t["image"]) and np.array_equal(s["boxes"], t["boxes"])
        lab, img = s["label_map"], s["image"]
        assert img.dtype == np.uint8 and img.shape[:2] == lab.shape
        h, w = lab.shape
        assert 96 <= h <= 128 and 112 <= w <= 144
        n = len(s["classes"])
        assert n >= 1 and set(np.unique(lab)) == set(range(-1, n))
        for j in range(n):
            assert np.array_equal(s["boxes"][j], tight_box(lab == j))  # pixel-edge tight box
            assert s["areas"][j] == (lab == j).sum()
        assert (s["boxes"][:, :2] >= 0).all() and (s["boxes"][:, 2] <= w).all() \
            and (s["boxes"][:, 3] <= h).all()
        assert ((s["classes"] >= 0) & (s["classes"] < 8)).all()
        sizes.extend(np.sqrt(s["areas"]))
    assert min(sizes) < 10 and max(sizes) > 35  # small and large objects
    other = SynthShapes(12, seed=4, num_classes=8, **SMALL)
    assert not np.array_equal(other.scene(0)["image"], src.scene(0)["image"])
    sample = src.load(5)
    assert sample["im_id"] == 6 and sample["gt_class"].dtype == np.int32
    assert sample["gt_bbox"].dtype == np.float32 and sample["gt_bbox"].shape[1] == 4
    assert src.class_names == list(CLASS_NAMES) and src.clsid2catid[0] == 1


# ----------------------------------------------------------------------------------------------
# COCODataSet

def test_coco_dataset_reads_written_synth_shapes(tmp_path):
    src = SynthShapes(6, seed=1, **SMALL)
    anno = write_coco(str(tmp_path), 6, seed=1, **SMALL)
    assert os.path.isfile(anno)
    ds = COCODataSet(str(tmp_path), "images", "instances.json")
    assert ds.num_entries == len(ds) == 6 and ds.dropped == {}
    assert ds.class_names == list(CLASS_NAMES[:6]) and ds.clsid2catid == src.clsid2catid
    assert len(pickle.dumps(ds)) < 20000
    dec = Decode()
    for i in range(6):
        got, want = ds.load(i), src.load(i)
        np.testing.assert_allclose(got["gt_bbox"], want["gt_bbox"], atol=1e-3)
        assert np.array_equal(got["gt_class"], want["gt_class"])
        assert got["im_id"] == want["im_id"]
        assert np.array_equal(got["im_shape"], want["im_shape"])
        a, b = dec(got, None), dec(dict(want), None)  # PNG bytes vs the BGR array: same RGB
        assert np.array_equal(a["image"], b["image"])
        assert np.array_equal(a["im_shape"], np.array(b["image"].shape[:2], np.float32))
    assert list(ds.epoch_indices(0)) == list(range(6))


def _handmade(tmp_path):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    for k in (1, 2, 3, 5):
        cv2.imwrite(str(img_dir / f"{k}.png"), np.zeros((50, 60, 3), np.uint8))
    images = [{"id": k, "file_name": f"{k}.png", "width": 60, "height": 50}
              for k in (5, 1, 2, 3, 4)]

    def ann(i, img, cat, bbox, area, crowd=0, **extra):
        return {"id": i, "image_id": img, "category_id": cat, "bbox": bbox, "area": area,
                "iscrowd": crowd, **extra}
    anns = [
        # image 1: one good box, one crowd, zero area, all-zero bbox, ignore, too thin, off-image
        ann(1, 1, 9, [10, 5, 20, 10], 200), ann(2, 1, 5, [0, 0, 30, 30], 900, crowd=1),
        ann(3, 1, 5, [1, 1, 5, 5], 0), ann(4, 1, 5, [0, 0, 0, 0], 0),
        ann(5, 1, 2, [2, 2, 5, 5], 25, ignore=1), ann(6, 1, 2, [2, 2, 1e-6, 5], 1),
        ann(7, 1, 2, [50.12345, 40, 20, 20], 400),
        # image 2: crowd only; image 3: nothing; image 4: file missing; image 5: one box
        ann(8, 2, 5, [1, 1, 9, 9], 81, crowd=1), ann(9, 4, 5, [1, 1, 9, 9], 81),
        ann(10, 5, 5, [3, 4, 10, 11], 110),
    ]
    cats = [{"id": 5, "name": "five"}, {"id": 2, "name": "two"}, {"id": 9, "name": "nine"}]
    with open(tmp_path / "ann.json", "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return str(tmp_path)


def test_coco_dataset_filtering(tmp_path):
    root = _handmade(tmp_path)
    ds = COCODataSet(root, "img", "ann.json")
    # categories in the file's order -> contiguous labels
    assert ds.catid2clsid == {5: 0, 2: 1, 9: 2} and ds.clsid2catid == {0: 5, 1: 2, 2: 9}
    assert ds.class_names == ["five", "two", "nine"] and ds.cname2cid["nine"] == 2
    assert list(ds.im_ids) == [1, 5]                 # ascending ids; 2, 3 empty, 4 missing
    assert ds.dropped == {"missing_image": 1, "no_annotation": 2}
    assert ds.dropped_boxes == {"crowd": 2, "invalid": 2, "zero_bbox": 1, "ignore": 1}
    s = ds.load(0)
    assert s["gt_bbox"].dtype == np.float32 and s["gt_class"].dtype == np.int32
    # x2 = x + w rounded to 3 decimals; boxes past the image are not clipped (release/2.7.1)
    np.testing.assert_allclose(s["gt_bbox"], [[10, 5, 30, 15], [50.123, 40, 70.123, 60]],
                               atol=1e-4)
    assert list(s["gt_class"]) == [2, 1] and list(s["is_crowd"]) == [0, 0]
    assert s["im_id"] == 1 and list(s["im_shape"]) == [50, 60] and "image_bytes" in s
    assert s["img_path"].endswith(os.path.join("img", "1.png"))

    clipped = COCODataSet(root, "img", "ann.json", clip_bbox=True)
    np.testing.assert_allclose(clipped.load(0)["gt_bbox"][1], [50.123, 40, 60, 50], atol=1e-4)

    crowd = COCODataSet(root, "img", "ann.json", load_crowd=True)
    assert list(crowd.im_ids) == [1, 2, 5]
    assert list(crowd.load(0)["is_crowd"]) == [0, 1, 0] and list(crowd.load(1)["is_crowd"]) == [1]

    empty = COCODataSet(root, "img", "ann.json", allow_empty=True)
    assert list(empty.im_ids) == [1, 5, 2, 3]        # empty images after the others
    assert len(empty.load(3)["gt_bbox"]) == 0 and empty.load(3)["gt_bbox"].shape == (0, 4)
    half = COCODataSet(root, "img", "ann.json", allow_empty=True, empty_ratio=0.2)
    # min(int(2 * 0.2 / 0.8), 2) = 0 empty images kept
    assert list(half.im_ids) == [1, 5] and half.dropped["empty_ratio"] == 2
    one = COCODataSet(root, "img", "ann.json", allow_empty=True, empty_ratio=0.4)  # int(1.33)
    assert len(one) == 3 and one.im_ids[2] in (2, 3)

    os.remove(os.path.join(root, "img", "5.png"))
    with pytest.raises(BadSample):
        ds.load(1)


def test_coco_dataset_bad_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        COCODataSet(str(tmp_path), "img", "missing.json")
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="cannot read annotation file") as e:
        COCODataSet(str(tmp_path), "img", "bad.json")
    assert "\n" not in str(e.value)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a COCO instances file"):
        COCODataSet(str(tmp_path), "img", "list.json")


# ----------------------------------------------------------------------------------------------
# transforms: boxes stay on their objects

def rect_sample(h=120, w=160, boxes=((10, 20, 50, 60), (70, 5, 150, 40), (100, 80, 158, 118),
                                     (0, 90, 30, 120))):
    """An RGB image whose object k (axis-aligned rectangle) is pure colour (k + 1, 0, 0) on a
    (200, 200, 200) background; the boxes are its pixel-edge boxes."""
    img = np.full((h, w, 3), 200, np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        img[y1:y2, x1:x2] = (k + 1, 0, 0)
    return {"image": img, "gt_bbox": np.array(boxes, np.float32),
            "gt_class": np.arange(len(boxes), dtype=np.int32),
            "is_crowd": np.zeros(len(boxes), np.int32),
            "im_shape": np.array([h, w], np.float32)}


def object_boxes(img, classes):
    return np.stack([tight_box((img[..., 0] == c + 1) & (img[..., 1] == 0) & (img[..., 2] == 0))
                     for c in classes])


def test_flip_expand_crop_keep_boxes_exact():
    flip, expand = RandomFlip(prob=1.0), RandomExpand(prob=0.0, fill_value=[123.675, 116.28,
                                                                             103.53])
    crop = RandomCrop(allow_no_crop=False)
    cut = 0
    for k in range(40):
        rng = np.random.default_rng(k)
        s = rect_sample()
        out = flip(dict(s), rng)
        assert out["flipped"]
        np.testing.assert_array_equal(object_boxes(out["image"], out["gt_class"]), out["gt_bbox"])
        out = expand(out, rng)
        h, w = out["image"].shape[:2]
        assert h > 120 and w > 160 and list(out["im_shape"]) == [h, w]
        assert tuple(out["image"][0, 0]) in ((124, 116, 104), (1, 0, 0), (2, 0, 0), (3, 0, 0),
                                             (4, 0, 0), (200, 200, 200))
        np.testing.assert_array_equal(object_boxes(out["image"], out["gt_class"]), out["gt_bbox"])
        before = out["gt_bbox"].copy()
        out = crop(out, rng)
        assert len(out["gt_bbox"]) == len(out["gt_class"]) == len(out["is_crowd"]) >= 1
        np.testing.assert_array_equal(object_boxes(out["image"], out["gt_class"]), out["gt_bbox"])
        assert list(out["im_shape"]) == list(out["image"].shape[:2])
        cut += len(out["gt_bbox"]) < len(before) or not np.array_equal(out["gt_bbox"],
                                                                        before[out["gt_class"]])
    assert cut > 10  # crops did cut and drop boxes


def test_crop_keeps_boxes_by_center():
    crop = RandomCrop(allow_no_crop=False, thresholds=[0.0])
    for k in range(30):
        s = rect_sample()
        out = crop(dict(s), np.random.default_rng(100 + k))
        h, w = out["image"].shape[:2]
        assert h < 120 or w < 160
        assert (out["gt_bbox"][:, 2] <= w).all() and (out["gt_bbox"][:, 3] <= h).all()
        assert (out["gt_bbox"][:, :2] < out["gt_bbox"][:, 2:]).all()


@pytest.mark.parametrize("keep_ratio,interp", [(False, cv2.INTER_NEAREST),
                                               (True, cv2.INTER_NEAREST),
                                               (False, cv2.INTER_CUBIC)])
def test_resize_keeps_boxes(keep_ratio, interp):
    s = rect_sample()
    s["scale_factor"] = np.array([1.0, 1.0], np.float32)
    out = Resize([200, 300], keep_ratio=keep_ratio, interp=interp)(dict(s))
    h, w = out["image"].shape[:2]
    if keep_ratio:  # min(200 / 120, 300 / 160) = 1.667
        assert (h, w) == (200, int(160 * 200 / 120 + 0.5))
    else:
        assert (h, w) == (200, 300)
    sy, sx = out["scale_factor"]
    assert abs(sy - h / 120) < 1e-6 and abs(sx - w / 160) < 1e-6
    assert list(out["im_shape"]) == [h, w]
    np.testing.assert_allclose(out["gt_bbox"], s["gt_bbox"] * [sx, sy, sx, sy], atol=1e-4)
    if interp == cv2.INTER_NEAREST:
        got = object_boxes(out["image"], out["gt_class"])
        assert np.abs(got - out["gt_bbox"]).max() <= 1.0
    # shrink and clip: a box past the image is clipped to the new size
    s2 = rect_sample()
    s2["gt_bbox"][0] = [100, 100, 200, 200]
    out = Resize(64, keep_ratio=False)(s2)
    assert out["gt_bbox"][0, 2] == 64 and out["gt_bbox"][0, 3] == 64


def test_distort_normalize_permute_decode():
    s = rect_sample()
    s["image"] = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    boxes = s["gt_bbox"].copy()
    d = RandomDistort()
    a = d(dict(s), np.random.default_rng(5))
    b = d(dict(s), np.random.default_rng(5))
    assert a["image"].dtype == np.uint8 and a["image"].shape == (40, 50, 3)
    assert np.array_equal(a["image"], b["image"])
    assert np.array_equal(a["gt_bbox"], boxes)
    changed = sum(not np.array_equal(d(dict(s), np.random.default_rng(k))["image"], s["image"])
                  for k in range(10))
    assert changed >= 8  # all four skipped with probability 1/16
    ssd = RandomDistort(random_apply=False, random_channel=True)
    assert ssd(dict(s), np.random.default_rng(1))["image"].shape == (40, 50, 3)

    n = NormalizeImage(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], is_scale=True)
    out = Permute()(n(dict(s)))
    assert out["image"].dtype == np.uint8 and out["image"].shape == (40, 50, 3)
    ref = (s["image"].astype(np.float32) / 255.0 - np.array([0.485, 0.456, 0.406])) \
        / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(normalize_image(out["image"], out["norm"]), ref, atol=1e-5)
    raw = NormalizeImage(is_scale=False, norm_type="none")(dict(s))
    np.testing.assert_allclose(normalize_image(s["image"], raw["norm"]), s["image"])

    ok, png = cv2.imencode(".png", s["image"])
    dec = Decode()({"image_bytes": png.tobytes()})
    assert np.array_equal(dec["image"], s["image"][..., ::-1])  # RGB
    assert list(dec["im_shape"]) == [40, 50] and list(dec["scale_factor"]) == [1, 1]
    with pytest.raises(BadSample):
        Decode()({"image_bytes": b"not an image"})


def test_reader_config_pipeline_keeps_boxes():
    """ppyoloe_reader.yml's train lists (nearest interpolation to check pixels exactly)."""
    sample_ops = build_sample_transforms([
        {"Decode": {}}, {"RandomDistort": {}},
        {"RandomExpand": {"fill_value": [123.675, 116.28, 103.53]}},
        {"RandomCrop": {}}, {"RandomFlip": {}}])
    assert sample_ops.random
    geo = build_sample_transforms([{"Decode": {}}, {"RandomExpand": {"fill_value": [0, 0, 0]}},
                                   {"RandomCrop": {}}, {"RandomFlip": {}}])
    batch_ops = build_batch_transforms([
        {"BatchRandomResize": {"target_size": [96, 128], "random_size": True,
                               "random_interp": False, "keep_ratio": False}},
        {"NormalizeImage": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                            "is_scale": True}},
        {"Permute": {}}, {"PadGT": {"num_max_boxes": 8}}])
    with pytest.raises(ValueError, match="unknown option"):
        build_sample_transforms([{"RandomFlip": {"p": 0.5}}])
    with pytest.raises(ValueError, match="sample_transforms"):
        build_batch_transforms([{"RandomFlip": {}}])
    batch = []
    for k in range(4):
        s = rect_sample()
        s["image"] = np.ascontiguousarray(s["image"][..., ::-1])  # as a BGR source gives it
        batch.append(geo(s, np.random.default_rng(k)))
        full = sample_ops(dict(rect_sample()), np.random.default_rng(k))
        assert len(full["gt_bbox"]) == len(full["gt_class"]) >= 1
    out = batch_ops(batch, step=7, seed=0)
    size = {tuple(o["image"].shape[:2]) for o in out}
    assert len(size) == 1 and size.pop() in ((96, 96), (128, 128))
    for before, o in zip(batch, out):
        n = int(o["pad_gt_mask"].sum())
        assert n == len(before["gt_bbox"]) and o["gt_bbox"].shape == (8, 4)
        got = object_boxes(o["image"], o["gt_class"][:n])
        assert np.abs(got - o["gt_bbox"][:n]).max() <= 1.0
        assert o["norm"].shape == (3, 3)


# ----------------------------------------------------------------------------------------------
# batch ops

def test_batch_random_resize_choice():
    op = BatchRandomResize(PPYOLOE_SIZES, keep_ratio=False, random_size=True, random_interp=True)
    again = BatchRandomResize(PPYOLOE_SIZES, keep_ratio=False, random_size=True,
                              random_interp=True)
    picks = [op.choose(step, seed=11) for step in range(200)]
    assert picks == [again.choose(step, seed=11) for step in range(200)]
    assert {p[0][0] for p in picks} == set(PPYOLOE_SIZES)       # every size, only those
    assert all(p[0][0] == p[0][1] for p in picks)
    assert {p[1] for p in picks} == set(INTERPS)
    assert [op.choose(s, seed=12) for s in range(200)] != picks
    assert op.sizes() == [[t, t] for t in PPYOLOE_SIZES]
    # another process picks the same, with nothing shared
    code = ("from jaxocr.data.transforms.ppdet_batch_operators import BatchRandomResize as B;"
            f"op=B({PPYOLOE_SIZES}, keep_ratio=False, random_interp=True);"
            "print([op.choose(s, seed=11) for s in range(200)])")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == str(picks)
    fixed = BatchRandomResize([64, 80], keep_ratio=False, random_size=False, interp=1)
    assert fixed.choose(3) == ([64, 80], 1)
    out = op([rect_sample(), rect_sample()], step=5, seed=11)
    (h, w), _ = picks[5]
    assert all(o["image"].shape[:2] == (h, w) for o in out)


def test_pad_gt():
    op = PadGT(num_max_boxes=5)
    a, b = rect_sample(), rect_sample(boxes=((1, 1, 5, 5),))
    c = rect_sample(boxes=())
    c["gt_bbox"] = np.zeros((0, 4), np.float32)
    out = op([a, b, c])
    for o, n in zip(out, (4, 1, 0)):
        assert o["gt_bbox"].shape == (5, 4) and o["gt_bbox"].dtype == np.float32
        assert o["gt_class"].shape == (5,) and o["gt_class"].dtype == np.int32
        assert o["pad_gt_mask"].dtype == np.float32
        assert list(o["pad_gt_mask"]) == [1] * n + [0] * (5 - n)
        assert not o["gt_bbox"][n:].any() and not o["gt_class"][n:].any()
        assert o["is_crowd"].shape == (5,)
    np.testing.assert_array_equal(out[0]["gt_bbox"][:4], a["gt_bbox"])
    np.testing.assert_array_equal(out[0]["gt_class"][:4], [0, 1, 2, 3])
    small = PadGT(num_max_boxes=2)
    o = small([rect_sample()])[0]
    assert o["gt_bbox"].shape == (2, 4) and small.truncated == 2 and o["pad_gt_mask"].sum() == 2
    assert PadGT(num_max_boxes=2, minimum_gtnum=6).num_max_boxes == 6
    big = rect_sample(h=30, w=40, boxes=((1, 1, 5, 5),))
    padded = PadGT(pad_img=True)([rect_sample(), big])
    assert padded[1]["image"].shape == (120, 160, 3) and not padded[1]["image"][30:].any()


# ----------------------------------------------------------------------------------------------
# COCOMetric

def _gt_detections(src, idx):
    out = []
    for i in idx:
        s = src.load(i)
        out.append((s["im_id"], s["gt_bbox"], np.ones(len(s["gt_bbox"])), s["gt_class"]))
    return out


def test_coco_metric_gt_is_perfect_and_jitter_is_not():
    src = SynthShapes(10, seed=2, **SMALL)
    m = COCOMetric(gt=src)
    for im_id, boxes, scores, labels in _gt_detections(src, range(10)):
        m.update_image(im_id, boxes, scores, labels)
    res = m.get_metric()
    assert set(res) == set(STAT_NAMES)
    assert res["AP"] == pytest.approx(1.0) and res["AP50"] == pytest.approx(1.0)
    assert res["AP75"] == pytest.approx(1.0) and res["AR100"] == pytest.approx(1.0)
    assert m.num_images == 0  # reset

    rng = np.random.default_rng(0)
    for im_id, boxes, scores, labels in _gt_detections(src, range(10)):
        wh = boxes[:, 2:] - boxes[:, :2]
        jit = boxes + rng.normal(0, 0.15, boxes.shape) * np.concatenate([wh, wh], 1)
        m.update_image(im_id, jit, rng.random(len(boxes)), labels)
    jittered = m.get_metric()
    assert 0.05 < jittered["AP"] < 0.9 and jittered["AP50"] > jittered["AP75"]

    # only half of the images evaluated: the rest count as missed, unless only_seen_images
    for only in (False, True):
        m = COCOMetric(gt=src, only_seen_images=only)
        for im_id, boxes, scores, labels in _gt_detections(src, range(5)):
            m.update_image(im_id, boxes, scores, labels)
        ap = m.get_metric()["AP"]
        assert (ap == pytest.approx(1.0)) == only
    # no detection at all
    assert COCOMetric(gt=src).get_metric()["AP"] <= 0.0


def test_coco_metric_merge_equals_whole_and_batches(tmp_path):
    src = SynthShapes(8, seed=5, **SMALL)
    rng = np.random.default_rng(1)
    dets = []
    for im_id, boxes, scores, labels in _gt_detections(src, range(8)):
        jit = boxes + rng.normal(0, 2.0, boxes.shape)
        extra = np.array([[0, 0, 20, 20]], np.float32)  # a false positive per image
        dets.append((im_id, np.concatenate([jit, extra]),
                     np.concatenate([rng.random(len(boxes)), [0.3]]),
                     np.concatenate([labels, [0]])))
    whole = COCOMetric(gt=src)
    for d in dets:
        whole.update_image(*d)
    parts = [COCOMetric(gt=src) for _ in range(3)]
    for k, d in enumerate(dets):
        parts[k % 3].update_image(*d)
    parts[1].update(np.array([dets[1][0]]), dets[1][1][None], dets[1][2][None],
                    dets[1][3][None])  # a repeated image (sampler padding) is ignored
    merged = COCOMetric(gt=src)
    for p in parts:
        merged.merge(p.state())
    assert parts[1].duplicates == 1
    assert sorted(merged.results(), key=str) == sorted(whole.results(), key=str)
    want = whole.get_metric()
    assert merged.get_metric() == want and 0.1 < want["AP"] < 1.0

    # a fixed-size batch: padded detections (label -1 or past num) and a padded row
    K = 12
    batch = COCOMetric(gt=src)
    ids, bx, sc, lb, num = [], [], [], [], []
    for im_id, boxes, scores, labels in dets:
        n = len(boxes)
        ids.append(im_id)
        bx.append(np.concatenate([boxes, np.zeros((K - n, 4))]))
        sc.append(np.concatenate([scores, np.zeros(K - n)]))
        lb.append(np.concatenate([labels, -np.ones(K - n)]))
        num.append(n)
    ids.append(dets[0][0])
    bx.append(bx[0])
    sc.append(sc[0])
    lb.append(lb[0])
    num.append(0)
    batch.update(np.array(ids), np.array(bx), np.array(sc), np.array(lb), num=np.array(num),
                 weights=np.array([1] * 8 + [0]))
    assert batch.get_metric() == want

    # the same against the written files, with COCODataSet as the ground truth
    write_coco(str(tmp_path), 8, seed=5, **SMALL)
    ds = COCODataSet(str(tmp_path), "images", "instances.json")
    files = COCOMetric(gt=ds)
    paddle_rows, counts = [], []
    for im_id, boxes, scores, labels in dets:
        paddle_rows.append(np.concatenate([labels[:, None], scores[:, None], boxes], 1))
        counts.append(len(boxes))
    files.update_paddle(np.concatenate(paddle_rows), counts, [d[0] for d in dets])
    got = files.get_metric()
    for k in STAT_NAMES:
        assert got[k] == pytest.approx(want[k], abs=1e-6)


def test_coco_metric_crowd_regions_and_category_ids(tmp_path):
    root = _handmade(tmp_path)
    anno = os.path.join(root, "ann.json")
    ds = COCODataSet(root, "img", "ann.json")
    m = COCOMetric(anno_file=anno, classwise=True, only_seen_images=True)
    assert m.clsid2catid == ds.clsid2catid == {0: 5, 1: 2, 2: 9}
    m.update_image(5, [[3, 4, 13, 15]], [1.0], [0])       # category id 5 = label 0
    m.update_image(2, [[1, 1, 10, 10]], [0.9], [0])       # on image 2's crowd region: ignored
    res = m.get_metric()
    assert res["AP"] == pytest.approx(1.0)
    per = res["per_class_AP"]
    assert per["five"] == pytest.approx(1.0) and np.isnan(per["two"]) and np.isnan(per["nine"])

    def ap(*dets):
        x = COCOMetric(anno_file=anno)
        for d in dets:
            x.update_image(*d)
        return x.get_metric()
    hit = (5, [[3, 4, 13, 15]], [0.5], [0])
    base = ap(hit)
    assert base == ap(hit, (2, [[1, 1, 10, 10]], [0.9], [0]))       # crowd: no false positive
    assert ap(hit, (3, [[1, 1, 10, 10]], [0.9], [0]))["AP"] < base["AP"]  # elsewhere: one
    with pytest.raises(ValueError, match="not in the ground truth"):
        bad = COCOMetric(gt=SynthShapes(2, seed=0, **SMALL))
        bad.update_image(99, [[0, 0, 5, 5]], [1.0], [0])
        bad.get_metric()


def test_eval_pipeline_round_trip_to_source_pixels():
    """Eval reader (Decode -> Resize 640 keep_ratio False, cubic) then boxes / scale_factor
    back to source pixels: the ground truth scores AP 1."""
    src = SynthShapes(6, seed=9, **SMALL)
    ops = build_sample_transforms([
        {"Decode": {}}, {"Resize": {"target_size": [640, 640], "keep_ratio": False, "interp": 2}},
        {"NormalizeImage": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                            "is_scale": True}}, {"Permute": {}}])
    m = COCOMetric(gt=src)
    for i in range(6):
        s = ops(src.load(i))
        assert s["image"].shape == (640, 640, 3)
        sy, sx = s["scale_factor"]
        back = s["gt_bbox"] / np.array([sx, sy, sx, sy], np.float32)
        m.update_image(s["im_id"], back, np.ones(len(back)), s["gt_class"])
    assert m.get_metric()["AP"] == pytest.approx(1.0)
