"""DB detection transforms (jaxocr/data/transforms/det_*.py) against PaddleOCR 2.7's rules, on
hand-made inputs. numpy / OpenCV / pyclipper only (no JAX)."""
import json
import math

import cv2
import numpy as np
import pyclipper
import pytest
from shapely.geometry import Polygon

from jaxocr.data import transforms
from jaxocr.data.transforms import BadSample
from jaxocr.data.transforms.common import NormalizeImage, ToCHWImage, normalize
from jaxocr.data.transforms.det_aug import IaaAugment
from jaxocr.data.transforms.det_crop import EastRandomCropData, _split_regions, crop_area
from jaxocr.data.transforms.det_label import DetLabelEncode, pad_polygons
from jaxocr.data.transforms.det_maps import MakeBorderMap, MakeShrinkMap
from jaxocr.data.transforms.det_resize import (DetPadToBucket, DetResizeForTest, pad_to_bucket,
                                               shape_buckets)


def label(*items):
    return json.dumps([{"transcription": t, "points": p} for t, p in items])


def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# ---------------------------------------------------------------------------------- label
def test_det_label_encode_expands_points_and_tags():
    d = DetLabelEncode()({"label": label(("ab", rect(1, 2, 30, 12)),
                                         ("###", [[0, 0], [5, 0], [9, 3], [5, 6], [0, 6], [1, 3]]),
                                         ("*", rect(0, 0, 4, 4)))})
    assert d["polys"].dtype == np.float32 and d["polys"].shape == (3, 6, 2)
    np.testing.assert_array_equal(d["polys"][0, 4:], [[1, 12], [1, 12]])  # last point repeated
    np.testing.assert_array_equal(d["ignore_tags"], [False, True, True])
    assert d["ignore_tags"].dtype == np.bool_ and d["texts"] == ["ab", "###", "*"]
    with pytest.raises(BadSample):
        DetLabelEncode()({"label": "[]"})
    with pytest.raises(BadSample):
        DetLabelEncode()({"label": "not json"})


# ---------------------------------------------------------------------------------- shrink map
def shrink(polys, tags, h=100, w=160, **kw):
    d = {"image": np.zeros((h, w, 3), np.uint8), "polys": np.array(polys, np.float64),
         "ignore_tags": np.array(tags)}
    return MakeShrinkMap(**kw)(d)


def test_shrink_map_rectangle_is_pyclipper_shrunk_rectangle():
    d = shrink([rect(10, 20, 110, 60)], [False])
    # area 4000, perimeter 280: D = 4000 * (1 - 0.16) / 280 = 12 -> x 22..98, y 32..48
    pco = pyclipper.PyclipperOffset()
    pco.AddPath(rect(10, 20, 110, 60), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    (got,) = pco.Execute(-12.0)
    assert sorted(map(tuple, got)) == sorted([(22, 32), (98, 32), (98, 48), (22, 48)])
    want = np.zeros((100, 160), np.float32)
    want[32:49, 22:99] = 1
    np.testing.assert_array_equal(d["shrink_map"], want)
    np.testing.assert_array_equal(d["shrink_mask"], np.ones((100, 160), np.float32))
    assert d["shrink_map"].dtype == np.float32 and d["shrink_mask"].dtype == np.float32


def test_shrink_mask_ignored_tiny_and_clipped():
    d = shrink([rect(10, 10, 60, 40), rect(70, 10, 120, 15), rect(130, 50, 200, 90),
                rect(0, 80, 30, 80.5)], [True, False, False, False])
    mask = d["shrink_mask"]
    assert (mask[10:41, 10:61] == 0).all()          # ignored: mask 0 over the polygon
    assert (mask[10:16, 70:121] == 0).all()         # min side 5 < 8: mask 0, tag set
    np.testing.assert_array_equal(d["ignore_tags"], [True, True, False, True])  # area < 1
    assert d["shrink_map"][10:41, 10:61].sum() == 0 and d["shrink_map"][10:16, 70:121].sum() == 0
    # clipped to the image: x 130..159, y 50..90 -> polys come out clipped (PaddleOCR in place)
    assert d["polys"][2][:, 0].max() == 159 and d["shrink_map"][60:80, 140:150].all()


def test_shrink_retry_ratio_when_split():
    # two 40x40 squares joined by a 20 x 10 neck: D(0.4) = 8.4 cuts the neck (2 pieces),
    # D(0.8) = 3400 * 0.36 / 340 = 3.6 keeps it (1 piece) -> PaddleOCR uses the 0.8 shrink
    poly = [[0, 0], [40, 0], [40, 15], [60, 15], [60, 0], [100, 0], [100, 40], [60, 40],
            [60, 25], [40, 25], [40, 40], [0, 40]]
    poly = [[x + 20, y + 20] for x, y in poly]
    d = shrink([poly], [False], h=100, w=160)
    # validate_polygons reverses it where PaddleOCR's area is > 0; offset as it does
    p = d["polys"][0]
    pco = pyclipper.PyclipperOffset()
    pco.AddPath([tuple(q) for q in p], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    shape = Polygon(p)
    assert len(pco.Execute(-shape.area * (1 - 0.4 ** 2) / shape.length)) == 2
    one = pco.Execute(-shape.area * (1 - 0.8 ** 2) / shape.length)
    assert len(one) == 1
    want = np.zeros((100, 160), np.float32)
    cv2.fillPoly(want, [np.array(one[0]).astype(np.int32)], 1)
    np.testing.assert_array_equal(d["shrink_map"], want)
    assert d["shrink_map"][40, 70] == 1  # the neck survives


# ---------------------------------------------------------------------------------- border map
def paddle_pixel(xf, yf, p1, p2):
    """PaddleOCR's _distance for one pixel, float64 scalars (np.float64 for IEEE NaN/inf)."""
    with np.errstate(all="ignore"):
        x, y = np.float64(xf), np.float64(yf)
        sd1 = (x - p1[0]) ** 2 + (y - p1[1]) ** 2
        sd2 = (x - p2[0]) ** 2 + (y - p2[1]) ** 2
        sd = (np.float64(p1[0]) - p2[0]) ** 2 + (np.float64(p1[1]) - p2[1]) ** 2
        cosin = (sd - sd1 - sd2) / (2 * np.sqrt(sd1 * sd2))
        ss = np.nan_to_num(1 - cosin ** 2)
        r = np.sqrt(sd1 * sd2 * ss / sd)
        if cosin < 0:
            r = np.sqrt(min(sd1, sd2))
        return r


def border_reference(polys, tags, h, w, r=0.4, tmin=0.3, tmax=0.7):
    """Per-pixel MakeBorderMap: each pixel of each dilated box, each edge, in plain loops."""
    canvas = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), np.float32)
    for poly, tag in zip(polys, tags):
        if tag:
            continue
        poly = np.array(poly, np.float64)
        shape = Polygon(poly)
        if shape.area <= 0:
            continue
        D = shape.area * (1 - r ** 2) / shape.length
        pco = pyclipper.PyclipperOffset()
        pco.AddPath([tuple(p) for p in poly], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
        padded = np.array(pco.Execute(D)[0])
        cv2.fillPoly(mask, [padded.astype(np.int32)], 1.0)
        x0, y0 = padded.min(axis=0)
        x1, y1 = padded.max(axis=0)
        n = len(poly)
        for y in range(max(0, y0), min(h - 1, y1) + 1):
            for x in range(max(0, x0), min(w - 1, x1) + 1):
                vals = [np.float32(min(max(paddle_pixel(x - x0, y - y0, poly[i] - (x0, y0),
                                                        poly[(i + 1) % n] - (x0, y0)) / D,
                                           0.0), 1.0)) for i in range(n)]
                if any(np.isnan(v) for v in vals):
                    continue  # NaN: np.fmax keeps the canvas
                canvas[y, x] = max(canvas[y, x], np.float32(1) - min(vals))
    return canvas * (tmax - tmin) + tmin, mask


HAND_POLYS = [
    rect(10, 10, 50, 26),                                               # rectangle
    [[70, 8], [110, 16], [106, 34], [66, 26]],                          # rotated quad
    [[20, 40], [60, 40], [60, 70], [45, 70], [45, 52], [20, 52]],       # concave L
    [[80, 45], [115, 47], [112, 66], [84, 63], [84, 63], [84, 63]],     # repeated last point
    [[-6, 60], [18, 62], [16, 80], [-8, 78]],                           # partly off the image
    [[100, 70], [130, 70], [130, 95], [100, 95]],                       # ignored
]
HAND_POLYS = [p + [p[-1]] * (6 - len(p)) for p in HAND_POLYS]  # as DetLabelEncode expands


def test_border_map_equals_per_pixel_reference():
    h, w = 90, 125
    tags = [False] * 5 + [True]
    d = MakeBorderMap()({"image": np.zeros((h, w, 3), np.uint8),
                         "polys": np.array(HAND_POLYS, np.float64), "ignore_tags": tags})
    ref_map, ref_mask = border_reference(HAND_POLYS, tags, h, w)
    assert d["threshold_map"].dtype == np.float32 and d["threshold_mask"].dtype == np.float32
    np.testing.assert_array_equal(d["threshold_mask"], ref_mask)
    np.testing.assert_array_equal(d["threshold_map"], ref_map)  # bit for bit
    assert d["threshold_map"].min() >= 0.3 - 1e-7 and d["threshold_map"].max() <= 0.7 + 1e-7
    assert d["threshold_map"][10, 30] == pytest.approx(0.7, abs=1e-6)  # on an edge: 1 - 0
    assert d["threshold_map"][85, 120] == pytest.approx(0.3)            # ignored: untouched


def paddle_border_fullbox(polys, tags, h, w, r=0.4):
    """PaddleOCR's algorithm as written there: every edge over the whole dilated box."""
    canvas = np.zeros((h, w), np.float32)
    for poly, tag in zip(polys, tags):
        if tag:
            continue
        poly = np.array(poly)
        shape = Polygon(poly)
        D = shape.area * (1 - r ** 2) / shape.length
        pco = pyclipper.PyclipperOffset()
        pco.AddPath([tuple(p) for p in poly], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
        padded = np.array(pco.Execute(D)[0])
        xmin, ymin = padded.min(axis=0)
        xmax, ymax = padded.max(axis=0)
        bw, bh = xmax - xmin + 1, ymax - ymin + 1
        poly[:, 0] -= xmin
        poly[:, 1] -= ymin
        xs = np.broadcast_to(np.linspace(0, bw - 1, num=bw).reshape(1, bw), (bh, bw))
        ys = np.broadcast_to(np.linspace(0, bh - 1, num=bh).reshape(bh, 1), (bh, bw))
        dm = np.zeros((len(poly), bh, bw), np.float32)
        for i in range(len(poly)):
            p1, p2 = poly[i], poly[(i + 1) % len(poly)]
            with np.errstate(all="ignore"):
                s1 = np.square(xs - p1[0]) + np.square(ys - p1[1])
                s2 = np.square(xs - p2[0]) + np.square(ys - p2[1])
                s = np.square(p1[0] - p2[0]) + np.square(p1[1] - p2[1])
                c = (s - s1 - s2) / (2 * np.sqrt(s1 * s2))
                res = np.sqrt(s1 * s2 * np.nan_to_num(1 - np.square(c)) / s)
            res[c < 0] = np.sqrt(np.fmin(s1, s2))[c < 0]
            dm[i] = np.clip(res / D, 0, 1)
        dm = dm.min(axis=0)
        xv0, xv1 = min(max(0, xmin), w - 1), min(max(0, xmax), w - 1)
        yv0, yv1 = min(max(0, ymin), h - 1), min(max(0, ymax), h - 1)
        canvas[yv0:yv1 + 1, xv0:xv1 + 1] = np.fmax(
            1 - dm[yv0 - ymin:yv1 - ymax + bh, xv0 - xmin:xv1 - xmax + bw],
            canvas[yv0:yv1 + 1, xv0:xv1 + 1])
    return canvas * 0.4 + 0.3


def random_scene(rng, n=20, size=640):
    polys = []
    for _ in range(n):
        cx, cy = rng.uniform(0, size, 2)
        bw, bh = rng.uniform(20, 300), rng.uniform(8, 60)
        a = rng.uniform(-0.3, 0.3)
        c, s = math.cos(a), math.sin(a)
        pts = [(-bw / 2, -bh / 2), (bw / 2, -bh / 2), (bw / 2, bh / 2), (-bw / 2, bh / 2)]
        polys.append([[cx + c * x - s * y, cy + s * x + c * y] for x, y in pts])
    return np.array(polys)


def test_border_map_windows_equal_paddle_full_box():
    rng = np.random.default_rng(3)
    polys = random_scene(rng, 12, 320)  # centres inside, boxes sticking out of the image
    polys = np.concatenate([polys, polys[:2] + 0.25])
    tags = [False] * len(polys)
    d = MakeBorderMap()({"image": np.zeros((320, 320, 3), np.uint8), "polys": polys,
                         "ignore_tags": tags})
    np.testing.assert_array_equal(d["threshold_map"], paddle_border_fullbox(polys, tags, 320, 320))


# ---------------------------------------------------------------------------------- IaaAugment
def poly_image(polys, h, w):
    img = np.zeros((h, w, 3), np.uint8)
    cv2.fillPoly(img, [np.round(p).astype(np.int32) for p in polys], (255, 255, 255))
    return img


def test_iaa_fliplr_and_resize_fixed():
    polys = np.array([rect(10, 20, 50, 40)], np.float64)
    img = poly_image(polys, 60, 100)
    d = IaaAugment([["Fliplr", 1.0]])({"image": img, "polys": polys}, np.random.default_rng(0))
    np.testing.assert_array_equal(d["image"], img[:, ::-1])
    np.testing.assert_allclose(d["polys"][0][:, 0], [90, 50, 50, 90])  # imgaug: width - x
    d = IaaAugment([{"type": "Resize", "args": {"size": 2.0}}])(
        {"image": img, "polys": polys}, np.random.default_rng(0))
    assert d["image"].shape == (120, 200, 3)
    np.testing.assert_allclose(d["polys"], polys * 2)


def test_iaa_default_moves_polygons_with_the_image():
    polys = np.array([rect(40, 30, 160, 60), [[50, 90], [150, 80], [160, 110], [60, 120]]],
                     np.float64)
    img = poly_image(polys, 150, 200)
    for seed in range(6):
        d = IaaAugment()({"image": img.copy(), "polys": polys.copy()}, np.random.default_rng(seed))
        out = d["image"][..., 0] > 127
        drawn = poly_image(d["polys"], *out.shape)[..., 0] > 127
        iou = (out & drawn).sum() / (out | drawn).sum()
        assert iou > 0.93, (seed, iou)
        s = d["image"].shape[0] / 150
        assert 0.5 - 0.01 <= s <= 3 + 0.01
        assert abs(d["image"].shape[1] / 200 - s) < 0.01  # one factor for both sides
    a = IaaAugment()({"image": img, "polys": polys}, np.random.default_rng(7))
    b = IaaAugment()({"image": img, "polys": polys}, np.random.default_rng(7))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["polys"], b["polys"])
    with pytest.raises(ValueError, match="supported"):
        IaaAugment([{"type": "GaussianBlur", "args": {}}])


# ---------------------------------------------------------------------------------- crop
def test_split_regions_drops_last_run():
    got = [r.tolist() for r in _split_regions(np.array([0, 1, 2, 5, 6, 9]))]
    assert got == [[0, 1, 2], [5, 6]]
    assert _split_regions(np.arange(10)) == []


def test_crop_area_full_image_when_text_covers_an_axis():
    polys = np.array([rect(0, 10, 100, 30)], np.float64)  # covers every column 0..99
    assert crop_area(50, 100, polys, 0.1, 50, np.random.default_rng(0)) == (0, 0, 100, 50)


def test_east_random_crop_keeps_text_and_size():
    rng = np.random.default_rng(0)
    h, w = 600, 900
    polys = np.array([rect(100, 100, 300, 140), rect(500, 200, 700, 260),
                      rect(150, 400, 420, 450), rect(600, 480, 800, 520)], np.float64)
    tags = np.array([False, False, True, False])
    img = poly_image(polys, h, w)
    op = EastRandomCropData(size=[640, 640], max_tries=50, keep_ratio=True)
    for seed in range(20):
        d = op({"image": img, "polys": polys, "ignore_tags": tags, "texts": list("abcd")},
               np.random.default_rng(seed))
        assert d["image"].shape == (640, 640, 3) and d["image"].dtype == np.uint8
        assert len(d["polys"]) == len(d["ignore_tags"]) == len(d["texts"]) >= 1
        assert (~d["ignore_tags"]).any()  # a crop touches a care polygon
        care = d["polys"][~d["ignore_tags"]]
        # crop edges lie in text-free rows/columns: care polygons are whole in the crop
        assert care.min() >= -2 and care.max() <= 640 + 2
        # the image moved with them: each care polygon's interior is white
        for p in care:
            cx, cy = p.mean(axis=0)
            assert d["image"][int(cy), int(cx), 0] > 200
    a = op({"image": img, "polys": polys, "ignore_tags": tags, "texts": list("abcd")},
           np.random.default_rng(5))
    b = op({"image": img, "polys": polys, "ignore_tags": tags, "texts": list("abcd")},
           np.random.default_rng(5))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["polys"], b["polys"])


def test_east_random_crop_scale_and_pad():
    # all columns covered -> whole image; 300 x 200 -> scale min(640/300, 640/200) = 2.1333
    img = np.full((200, 300, 3), 9, np.uint8)
    polys = np.array([rect(0, 50, 300, 80)], np.float64)
    d = EastRandomCropData()({"image": img, "polys": polys, "ignore_tags": [False],
                              "texts": ["x"]}, np.random.default_rng(0))
    s = 640 / 300
    assert (d["image"][:int(200 * s), :640] == 9).all() and (d["image"][int(200 * s):] == 0).all()
    np.testing.assert_allclose(d["polys"][0], polys[0] * s)


# ---------------------------------------------------------------------------------- normalise
def test_normalize_identity_and_reference():
    img = np.array([[[255, 0, 128]]], np.uint8)
    op = NormalizeImage(scale="1./255.", mean=[0.485, 0.456, 0.406],
                        std=[0.229, 0.224, 0.225], order="hwc")
    d = op({"image": img.copy()})
    np.testing.assert_array_equal(d["image"], img)
    np.testing.assert_allclose(d["norm"], [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                                           [1 / 255] * 3], rtol=1e-6)
    x = normalize(img, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1 / 255)
    assert x.dtype == np.float32
    want = (img.astype(np.float32) * np.float32(1 / 255)
            - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    np.testing.assert_array_equal(x, want)
    assert x[0, 0, 0] == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
    assert ToCHWImage()({"image": img})["image"] is img


# ---------------------------------------------------------------------------------- resize
@pytest.mark.parametrize("kw,hw,out,ratio", [
    ({"limit_side_len": 736, "limit_type": "min"}, (500, 1000), (736, 1472),
     (736 / 500, 1472 / 1000)),
    ({"limit_side_len": 960, "limit_type": "max"}, (1080, 1920), (544, 960),
     (544 / 1080, 960 / 1920)),
    ({"limit_side_len": 960, "limit_type": "max"}, (300, 500), (288, 512), (288 / 300, 512 / 500)),
    ({"image_shape": [736, 1280]}, (720, 1000), (736, 1280), (736 / 720, 1280 / 1000)),
    ({"image_shape": [736, 1280], "keep_ratio": True}, (720, 1280), (736, 1312),
     (736 / 720, 1312 / 1280)),
    ({}, (900, 1200), (896, 1216), (896 / 900, 1216 / 1200)),
    ({"resize_long": 960}, (500, 1000), (512, 1024), (512 / 500, 1024 / 1000)),
])
def test_det_resize_for_test(kw, hw, out, ratio):
    d = DetResizeForTest(**kw)({"image": np.zeros(hw + (3,), np.uint8)})
    assert d["image"].shape == out + (3,)
    assert d["image"].shape[0] % 32 == 0 and d["image"].shape[1] % 32 == 0
    np.testing.assert_allclose(d["shape"], [hw[0], hw[1], ratio[0], ratio[1]], rtol=1e-12)


def test_det_resize_small_image_padded_first():
    d = DetResizeForTest(limit_side_len=736, limit_type="min")(
        {"image": np.ones((20, 30, 3), np.uint8)})
    assert d["image"].shape == (736, 736, 3)
    np.testing.assert_allclose(d["shape"], [20, 30, 736 / 32, 736 / 32])


def test_pad_to_bucket_and_polygons():
    buckets = shape_buckets(736, 1312, step=128)
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in buckets) and len(buckets) == 6 * 11
    img = np.ones((736, 1312, 3), np.uint8)
    out, valid = pad_to_bucket(img, buckets)
    assert out.shape == (768, 1408, 3) and valid.tolist() == [736, 1312]
    assert out[:736, :1312].all() and not out[736:].any() and not out[:, 1312:].any()
    with pytest.raises(ValueError):
        pad_to_bucket(np.ones((2000, 10, 3), np.uint8), buckets)
    d = DetPadToBucket([[736, 1280], [736, 1312]])({"image": img})
    assert d["image"].shape == (736, 1312, 3) and d["valid_shape"].tolist() == [736, 1312]
    p, t, v = pad_polygons(np.array([rect(0, 0, 4, 4)]), [True], 3, 6)
    assert p.shape == (3, 6, 2) and t.tolist() == [True, False, False]
    assert v.tolist() == [True, False, False] and (p[0, 4:] == [0, 4]).all()


# ---------------------------------------------------------------------------------- pipeline
DET_TRAIN = [
    {"DecodeImage": {"img_mode": "BGR", "channel_first": False}},
    {"DetLabelEncode": None},
    {"IaaAugment": {"augmenter_args": [{"type": "Fliplr", "args": {"p": 0.5}},
                                       {"type": "Affine", "args": {"rotate": [-10, 10]}},
                                       {"type": "Resize", "args": {"size": [0.5, 3]}}]}},
    {"EastRandomCropData": {"size": [640, 640], "max_tries": 50, "keep_ratio": True}},
    {"MakeBorderMap": {"shrink_ratio": 0.4, "thresh_min": 0.3, "thresh_max": 0.7}},
    {"MakeShrinkMap": {"shrink_ratio": 0.4, "min_text_size": 8}},
    {"NormalizeImage": {"scale": "1./255.", "mean": [0.485, 0.456, 0.406],
                        "std": [0.229, 0.224, 0.225], "order": "hwc"}},
    {"ToCHWImage": None},
    {"KeepKeys": {"keep_keys": ["image", "threshold_map", "threshold_mask", "shrink_map",
                                "shrink_mask"]}},
]


def test_det_train_pipeline_through_build_transforms():
    fn = transforms.build_transforms(DET_TRAIN, None, {})
    polys = [rect(60, 50, 300, 90), rect(80, 200, 400, 260), rect(350, 120, 380, 128)]
    img = poly_image(np.array(polys, float), 400, 500)
    sample = {"image": img, "label": label(("a", polys[0]), ("b", polys[1]), ("###", polys[2]))}
    a = fn(sample, np.random.default_rng(11))
    b = fn(sample, np.random.default_rng(11))
    assert set(a) == {"image", "threshold_map", "threshold_mask", "shrink_map", "shrink_mask"}
    assert a["image"].shape == (640, 640, 3) and a["image"].dtype == np.uint8
    for k in ("threshold_map", "threshold_mask", "shrink_map", "shrink_mask"):
        assert a[k].shape == (640, 640) and a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k])
    assert a["shrink_map"].sum() > 0 and a["threshold_mask"].sum() > a["shrink_map"].sum()
    with pytest.raises(ValueError, match="unknown option"):
        transforms.build_transforms([{"MakeShrinkMap": {"shrink": 1}}], None, {})
