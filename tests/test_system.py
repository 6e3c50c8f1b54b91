"""The det -> rec text system (jaxocr/system.py, launch/ocr.py) as PaddleOCR's predict_system:
box order, crops, batching by aspect ratio, drop_score, the results file, the CLI's errors."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import QUICKSTART, ROOT, TINY, det_config_file
from jaxocr.data.synth_scenes import SynthTextScene
from jaxocr.system import (TextSystem, draw_ocr, filter_boxes, get_minarea_rect_crop,
                           get_rotate_crop_image, order_points_clockwise, paddle_line,
                           reading_order, sorted_boxes)

OCR = os.path.join(ROOT, "launch", "ocr.py")


def rect(x, y, w=20, h=8):
    """An axis-aligned box TL, TR, BR, BL with its first point at (x, y)."""
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32)


# -- sorted_boxes ----------------------------------------------------------------------------
def test_sorted_boxes_two_lines_out_of_order():
    # line 1: first points at y 10..15, given right to left; line 2: y 50 and 55
    a, b, c = rect(100, 12), rect(10, 15), rect(200, 10)
    d, e = rect(5, 55), rect(80, 50)
    got = sorted_boxes([e, a, d, c, b])
    expected = [b, a, c, d, e]  # each line left to right, whatever y within 10 px
    assert len(got) == 5 and all(g is x for g, x in zip(got, expected))
    boxes = np.stack([e, a, d, c, b])  # (N, 4, 2), as Paddle's detector gives
    assert [int(g[0][0]) for g in sorted_boxes(boxes)] == [10, 100, 200, 5, 80]


def test_sorted_boxes_is_paddles_bubble_not_line_grouping():
    # Paddle's loop only compares neighbours: y 0, 8, 16 are each < 10 px from the next but 16
    # is 16 px from 0, so x 30 stops behind x 50 (a line grouping would put it first)
    boxes = [rect(50, 0), rect(40, 8), rect(30, 16)]
    assert [int(b[0][0]) for b in sorted_boxes(boxes)] == [40, 50, 30]
    # 10 px apart is another line: no swap; 9.9 px is the same line
    assert [int(b[0][0]) for b in sorted_boxes([rect(50, 0), rect(10, 10)])] == [50, 10]
    assert [float(b[0][0]) for b in sorted_boxes([rect(50, 0), rect(10, 9.9)])] == [10, 50]
    # equal first points keep the input order; nothing in, nothing out
    same = [rect(5, 5, w=30), rect(5, 5, w=10)]
    assert reading_order(same) == [0, 1] and sorted_boxes([]) == []


# -- crops -----------------------------------------------------------------------------------
def test_axis_aligned_crop_is_the_pixels_and_tall_crops_turn():
    img = np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    crop = get_rotate_crop_image(img, rect(10, 20, w=40, h=15))
    np.testing.assert_array_equal(crop, img[20:35, 10:50])  # a translation: exact pixels
    tall = get_rotate_crop_image(img, rect(30, 5, w=20, h=60))
    assert tall.shape == (20, 60, 3) and tall.flags.c_contiguous
    np.testing.assert_array_equal(tall, np.rot90(img[5:65, 30:50]))
    # turned from height / width 1.5 on: 30 / 20 turns, 29 / 20 does not
    assert get_rotate_crop_image(img, rect(0, 0, w=20, h=30)).shape == (20, 30, 3)
    assert get_rotate_crop_image(img, rect(0, 0, w=20, h=29)).shape == (29, 20, 3)


def _rotated_patch(angle, size, colour=(30, 200, 90)):
    """A grey image with a solid rotated rectangle 10 px larger than `size`, and the corners
    (TL, TR, BR, BL) of the `size` one with the same centre and angle."""
    img = np.full((200, 240, 3), 128, np.uint8)
    centre = (120.0, 100.0)
    big = cv2.boxPoints((centre, (size[0] + 10, size[1] + 10), angle))
    cv2.fillPoly(img, [np.round(big).astype(np.int32)], colour)
    return img, order_points_clockwise(cv2.boxPoints((centre, size, angle)))


def _with_midpoints(quad):
    """The 8-point polygon of a quad: each corner, then the middle of the edge after it."""
    mid = (quad + np.roll(quad, -1, axis=0)) / 2
    return np.stack([quad, mid], axis=1).reshape(-1, 2)


@pytest.mark.parametrize("angle", [0.0, 17.0, -25.0])
def test_rotated_rectangle_crop_is_its_colour_and_size(angle):
    img, quad = _rotated_patch(angle, (80, 30))
    crop = get_rotate_crop_image(img, quad)
    assert abs(crop.shape[1] - 80) <= 1 and abs(crop.shape[0] - 30) <= 1
    assert np.abs(crop.astype(int) - (30, 200, 90)).max() <= 1
    # a polygon of the same rectangle (corners and edge midpoints): its min-area rectangle
    poly = _with_midpoints(quad)
    crop = get_minarea_rect_crop(img, poly)
    assert abs(crop.shape[1] - 80) <= 2 and abs(crop.shape[0] - 30) <= 2
    assert np.abs(crop.astype(int) - (30, 200, 90)).max() <= 1


def test_tall_rotated_box_is_turned():
    img, quad = _rotated_patch(10.0, (24, 70), colour=(0, 0, 255))
    crop = get_rotate_crop_image(img, quad)
    assert crop.shape[0] < crop.shape[1] and abs(crop.shape[1] - 70) <= 1
    assert np.abs(crop.astype(int) - (0, 0, 255)).max() <= 1


def test_filter_boxes_orders_clips_and_drops_small_ones():
    shuffled = rect(10, 10, w=30, h=12)[[2, 0, 3, 1]]
    outside = np.array([[-5, 3], [70.7, -2], [70.7, 20], [-5, 20]], np.float32)
    tiny = rect(40, 40, w=3, h=10)
    got = filter_boxes([shuffled, outside, tiny], (50, 64, 3))
    assert len(got) == 2
    np.testing.assert_array_equal(got[0], rect(10, 10, w=30, h=12))
    np.testing.assert_array_equal(got[1], [[0, 3], [63, 0], [63, 20], [0, 20]])
    # polygons are only clipped
    poly = np.array([[-1, 1], [5, 1], [9, 4], [5, 60], [-1, 60]], np.float32)
    np.testing.assert_array_equal(filter_boxes([poly], (50, 64), "poly")[0],
                                  [[0, 1], [5, 1], [9, 4], [5, 49], [0, 49]])


# -- TextSystem with stand-ins ---------------------------------------------------------------
class GroundTruthDetector:
    """A detector returning a scene's word polygons, in a scrambled order."""

    def __init__(self, words):
        self.boxes = [np.array(w["points"], np.float32) for w in words]
        self.calls = 0

    def __call__(self, images):
        assert len(images) == 1
        self.calls += 1
        order = np.random.default_rng(1).permutation(len(self.boxes))
        return [{"points": [self.boxes[i] for i in order], "scores": [0.9] * len(order)}]


class RecordingRecognizer:
    """Answers each crop with the text and score of the known crop it equals."""

    def __init__(self, crops, texts, scores):
        self.crops, self.texts, self.scores = crops, texts, scores
        self.batches = []

    def __call__(self, crops):
        self.batches.append(list(crops))
        out = []
        for c in crops:
            k = next(i for i, known in enumerate(self.crops)
                     if known.shape == c.shape and np.array_equal(known, c))
            out.append((self.texts[k], self.scores[k]))
        return out


@pytest.fixture(scope="module")
def scene():
    src = SynthTextScene(num_samples=1, seed=7, image_size=[200, 320], words_per_image=[7, 7],
                         font_size=[14, 30], dont_care_prob=0.0)
    return src.scene(0)


def test_text_system_restores_order_batches_by_ratio_and_drops(scene):
    img, words = scene["image"], scene["words"]
    assert len(words) >= 5
    detector = GroundTruthDetector(words)
    # what the system should see: Paddle's filtered boxes, in reading order, and their crops
    boxes = sorted_boxes(filter_boxes(detector.boxes, img.shape))
    crops = [get_rotate_crop_image(img, b) for b in boxes]
    texts = [f"word{k}" for k in range(len(boxes))]
    scores = [0.3 if k % 3 == 1 else 0.9 for k in range(len(boxes))]
    recognizer = RecordingRecognizer(crops, texts, scores)
    system = TextSystem(detector, recognizer, drop_score=0.5, rec_batch_num=2)
    results = system(img)

    assert detector.calls == 1
    # batches of at most 2 crops, every crop once, in increasing width / height
    assert [len(b) for b in recognizer.batches] == [2] * (len(crops) // 2) + [1] * (len(crops) % 2)
    seen = [c for b in recognizer.batches for c in b]
    ratios = [c.shape[1] / c.shape[0] for c in seen]
    assert ratios == sorted(ratios) and len(seen) == len(crops)
    # results in reading order (not the batches' order), low scores dropped
    kept = [k for k in range(len(boxes)) if scores[k] >= 0.5]
    assert [r["transcription"] for r in results] == [texts[k] for k in kept]
    assert len(kept) < len(boxes)
    for r, k in zip(results, kept):
        assert set(r) == {"transcription", "points", "score"}
        assert r["points"] == boxes[k].astype(np.int32).tolist()
        assert all(isinstance(v, int) for p in r["points"] for v in p)
        assert isinstance(r["score"], float) and r["score"] == scores[k]
    # the detector's order was not already the reading order, so sorting did happen
    given = filter_boxes(detector([img])[0]["points"], img.shape)
    assert reading_order(given) != list(range(len(given)))
    json.dumps(results)  # plain Python values

    everything = TextSystem(detector, RecordingRecognizer(crops, texts, scores), drop_score=0.0,
                            rec_batch_num=6)(img)
    assert [r["transcription"] for r in everything] == texts


def test_text_system_without_boxes_and_batch_count_check():
    img = np.zeros((32, 32, 3), np.uint8)

    def recognizer(crops):
        raise AssertionError("no crops, no recogniser call")

    none = TextSystem(lambda images: [{"points": [], "scores": []}], recognizer)
    assert none(img) == []
    short = TextSystem(lambda images: [{"points": [rect(2, 2, w=20, h=10)], "scores": [1.0]}],
                       lambda crops: [])
    with pytest.raises(RuntimeError, match="0 results for 1 crops"):
        short(img)
    with pytest.raises(ValueError, match="det_box_type"):
        TextSystem(None, None, det_box_type="circle")


def test_poly_boxes_are_cropped_by_their_min_area_rectangle():
    img, quad = _rotated_patch(12.0, (80, 30), colour=(200, 40, 40))
    poly = _with_midpoints(quad)
    got = []
    system = TextSystem(lambda images: [{"points": [poly], "scores": [1.0]}],
                        lambda crops: got.extend(crops) or [("x", 0.99)] * len(crops),
                        det_box_type="poly")
    (result,) = system(img)
    assert len(result["points"]) == 8 and result["transcription"] == "x"
    assert np.abs(got[0].astype(int) - (200, 40, 40)).max() <= 1


def test_draw_ocr_and_results_line(scene):
    img, words = scene["image"], scene["words"]
    results = [{"transcription": w["transcription"], "points": np.array(w["points"]).astype(int)
                .tolist(), "score": 0.9} for w in words]
    drawn = draw_ocr(img, results)
    h, w = img.shape[:2]
    assert drawn.shape == (h, 2 * w, 3) and drawn.dtype == np.uint8
    assert (drawn[:, w:] < 128).any()  # texts and outlines on the white right half
    assert not np.array_equal(drawn[:, :w], img)  # boxes filled on the left
    np.testing.assert_array_equal(draw_ocr(img, results), drawn)  # seeded colours
    assert draw_ocr(img, []).shape == (h, 2 * w, 3)

    line = paddle_line("a.png", [{"transcription": "é1", "points": [[1.7, 2], [3, 4]],
                                  "score": 0.25}])
    assert line == 'a.png\t[{"transcription": "é1", "points": [[1, 2], [3, 4]]}]'
    name, rows = paddle_line("a.png", results[:1], with_score=True).split("\t")
    assert json.loads(rows)[0]["score"] == 0.9


# -- launch/ocr.py ---------------------------------------------------------------------------
def _ocr(*args, timeout=600):
    return subprocess.run([sys.executable, OCR, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_ocr_cli_fails_in_one_line(tmp_path):
    det = det_config_file(tmp_path / "det.yml")
    cases = [
        (["--det_config", str(tmp_path / "nope.yml"), "--rec_config", QUICKSTART],
         "config file not found"),
        (["--det_config", det, "--rec_config", QUICKSTART], "set --det_opt Global.checkpoints"),
        (["--det_config", det, "--det_opt", f"Global.checkpoints={tmp_path / 'none'}",
          "--rec_config", QUICKSTART], "checkpoint not found"),
        (["--det_config", QUICKSTART, "--det_opt", f"Global.checkpoints={tmp_path}",
          "--rec_config", QUICKSTART], "--det_config must be a det model"),
    ]
    for args, message in cases:
        r = _ocr(*args, "--image_dir", str(tmp_path), timeout=120)
        assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


DET_TINY = ["Architecture.Backbone.scale=0.35", "Architecture.Neck.out_channels=16"]


@pytest.mark.slow
def test_ocr_cli_on_one_step_checkpoints(tmp_path):
    """Plumbing through the real Predictors: a det and a rec model trained one step each; the
    det thresholds at 0 make the whole image one box, so the recogniser runs too."""
    import jax
    from jaxocr.config import load_config
    from jaxocr.distributed import data_mesh
    from jaxocr.training.loop import train
    det = det_config_file(tmp_path / "det.yml", size=64)
    mesh = data_mesh(jax.devices()[:1])
    train(load_config(det, DET_TINY + ["Global.max_steps=1",
                                       f"Global.save_model_dir={tmp_path / 'det'}"]), mesh=mesh)
    train(load_config(QUICKSTART, TINY + ["Global.max_steps=1",
                                          f"Global.save_model_dir={tmp_path / 'rec'}"]), mesh=mesh)
    images = tmp_path / "images"
    images.mkdir()
    scene = SynthTextScene(num_samples=1, seed=3, image_size=[64, 80], words_per_image=[1, 2],
                           font_size=[10, 20]).scene(0)
    cv2.imwrite(str(images / "scene.png"), scene["image"])
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    r = _ocr("--det_config", det, "--det_opt", *DET_TINY, f"Global.checkpoints={tmp_path / 'det'}",
             "PostProcess.thresh=0", "PostProcess.box_thresh=0",
             "--rec_config", QUICKSTART, "--rec_opt", *TINY,
             f"Global.checkpoints={tmp_path / 'rec' / 'latest'}",
             "--image_dir", str(images), "--out", str(out), "--drop_score", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "broken.jpg" in r.stderr
    lines = (out / "system_results.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and lines[0] in r.stdout
    name, payload = lines[0].split("\t")
    rows = json.loads(payload)
    assert name == "scene.png" and len(rows) == 1
    assert set(rows[0]) == {"transcription", "points"} and isinstance(rows[0]["transcription"], str)
    pts = np.array(rows[0]["points"])
    assert pts.shape == (4, 2) and pts.min() >= 0
    assert pts[:, 0].max() <= 79 and pts[:, 1].max() <= 63  # clipped to the 80x64 image
    drawn = cv2.imread(str(out / "scene.png"))
    assert drawn is not None and drawn.shape == (64, 160, 3)
