"""Detection then recognition, as PaddleOCR 2.7's text system (tools/infer/predict_system.py).

    system = TextSystem.from_configs(det_cfg, rec_cfg)     # two jaxocr.infer.Predictors
    results = system(image)  # HxWx3 uint8 BGR -> [{'transcription', 'points', 'score'}, ...]

Per image, as Paddle's TextSystem with its TextDetector and TextRecognizer:

1. detect; each quad's corners put clockwise from the top-left (the smallest x + y), clipped to
   the image and truncated to whole pixels, boxes 3 px or less wide or high dropped (Paddle's
   TextDetector.filter_tag_det_res); polygons (`PostProcess.box_type: poly`) only clipped;
2. the boxes in reading order (`sorted_boxes`);
3. each box cut out of the image: a quad by its perspective warp (`get_rotate_crop_image`), a
   polygon by that of its minimum-area rectangle (`get_minarea_rect_crop`); a crop 1.5 times
   or more as high as wide is turned a quarter (a vertical line read left to right);
4. the crops recognised `rec_batch_num` at a time in increasing width / height order (Paddle's
   TextRecognizer), results put back in box order;
5. results scoring under `drop_score` dropped.

`detector` and `recognizer` are any callables with the `Predictor` contract: a list of images
in, one result each out (det {'points': [...], ...}; rec (text, score)). `draw_ocr` is Paddle's
draw_ocr_box_txt: the image with the boxes filled, beside the texts written into their boxes.
"""
from __future__ import annotations

import json
import random

import cv2
import numpy as np

MIN_BOX_SIDE = 3        # Paddle's filter_tag_det_res drops boxes this narrow or less
VERTICAL_RATIO = 1.5    # crop height / width from which a crop is turned a quarter
SAME_LINE_PX = 10       # sorted_boxes: first points closer than this in y are one line


# -- boxes ---------------------------------------------------------------------------------------
def order_points_clockwise(pts) -> np.ndarray:
    """4 corners -> float32 (4, 2): the smallest x + y first, the largest third, of the other
    two the one with the smaller y - x second (Paddle's TextDetector.order_points_clockwise)."""
    pts = np.asarray(pts, np.float32).reshape(4, 2)
    s = pts.sum(axis=1)
    first, third = int(np.argmin(s)), int(np.argmax(s))
    rest = np.delete(pts, (first, third), axis=0)
    diff = rest[:, 1] - rest[:, 0]
    return np.stack([pts[first], rest[np.argmin(diff)], pts[third], rest[np.argmax(diff)]])


def clip_box(points, height: int, width: int) -> np.ndarray:
    """Points clipped to the image's pixels and truncated to whole ones (Paddle's
    clip_det_res), float32."""
    pts = np.array(points, np.float32).reshape(-1, 2)
    pts[:, 0] = np.trunc(np.clip(pts[:, 0], 0, width - 1))
    pts[:, 1] = np.trunc(np.clip(pts[:, 1], 0, height - 1))
    return pts


def filter_boxes(boxes, image_shape, box_type: str = "quad") -> list[np.ndarray]:
    """The detector's boxes as Paddle's TextDetector returns them: quads ordered clockwise,
    clipped, those with a side (first edge, last edge) of 3 px or less dropped; polygons clipped
    only."""
    h, w = int(image_shape[0]), int(image_shape[1])
    out = []
    for box in boxes:
        if box_type == "quad":
            box = clip_box(order_points_clockwise(box), h, w)
            if (int(np.linalg.norm(box[0] - box[1])) <= MIN_BOX_SIDE or
                    int(np.linalg.norm(box[0] - box[3])) <= MIN_BOX_SIDE):
                continue
        else:
            box = clip_box(box, h, w)
        out.append(box)
    return out


def reading_order(boxes) -> list[int]:
    """Indices of `boxes` in Paddle's sorted_boxes order: by (y, x) of each first point, then
    each box bubbled left past its predecessors while their first points are under 10 px apart
    in y and it lies further left."""
    first = [(float(np.asarray(b)[0][1]), float(np.asarray(b)[0][0])) for b in boxes]
    order = sorted(range(len(boxes)), key=lambda i: first[i])  # stable: ties keep input order
    for i in range(len(order) - 1):
        for j in range(i, -1, -1):
            (y1, x1), (y0, x0) = first[order[j + 1]], first[order[j]]
            if abs(y1 - y0) < SAME_LINE_PX and x1 < x0:
                order[j], order[j + 1] = order[j + 1], order[j]
            else:
                break
    return order


def sorted_boxes(boxes) -> list:
    """Boxes top to bottom, left to right within a line (Paddle's sorted_boxes)."""
    return [boxes[i] for i in reading_order(boxes)]


# -- crops ---------------------------------------------------------------------------------------
def get_rotate_crop_image(img: np.ndarray, points) -> np.ndarray:
    """The quad (TL, TR, BR, BL) warped to an upright rectangle: width the longer of its top and
    bottom edges, height the longer of its sides (truncated, at least 1 px), bicubic, borders
    replicated; turned a quarter counter-clockwise (np.rot90) when height / width >= 1.5."""
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    if len(pts) != 4:
        raise ValueError(f"get_rotate_crop_image: a box of 4 points, got {len(pts)}")
    w = max(1, int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3]))))
    h = max(1, int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2]))))
    target = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    m = cv2.getPerspectiveTransform(pts, target)
    crop = cv2.warpPerspective(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE,
                               flags=cv2.INTER_CUBIC)
    if crop.shape[0] / crop.shape[1] >= VERTICAL_RATIO:
        crop = np.rot90(crop)
    return np.ascontiguousarray(crop)


def minarea_rect_corners(points) -> np.ndarray:
    """The corners of a polygon's minimum-area rectangle (of its int points) as TL, TR, BR, BL:
    of the two leftmost, the upper first, of the two rightmost the upper second (Paddle's
    get_minarea_rect_crop)."""
    rect = cv2.minAreaRect(np.asarray(points).reshape(-1, 2).astype(np.int32))
    p = sorted(cv2.boxPoints(rect), key=lambda q: q[0])
    a, d = (0, 1) if p[1][1] > p[0][1] else (1, 0)
    b, c = (2, 3) if p[3][1] > p[2][1] else (3, 2)
    return np.array([p[a], p[b], p[c], p[d]], np.float32)


def get_minarea_rect_crop(img: np.ndarray, points) -> np.ndarray:
    """A polygon's crop: `get_rotate_crop_image` of its minimum-area rectangle."""
    return get_rotate_crop_image(img, minarea_rect_corners(points))


# -- the system ----------------------------------------------------------------------------------
class TextSystem:
    """Detector then recogniser on one image at a time (see the module docstring).

    detector: images -> [{'points': boxes, ...}] per image; recognizer: crops -> [(text, score)]
    per crop, called once per batch of at most `rec_batch_num` crops. det_box_type 'quad' (4
    corners, Paddle's default) or 'poly' (polygons, cropped by their minimum-area rectangle)."""

    def __init__(self, detector, recognizer, drop_score: float = 0.5, rec_batch_num: int = 6,
                 det_box_type: str = "quad"):
        if det_box_type not in ("quad", "poly"):
            raise ValueError(f"det_box_type: {det_box_type!r}; known: quad, poly")
        if int(rec_batch_num) < 1:
            raise ValueError(f"rec_batch_num must be >= 1, got {rec_batch_num}")
        self.detector, self.recognizer = detector, recognizer
        self.drop_score = float(drop_score)
        self.rec_batch_num = int(rec_batch_num)
        self.det_box_type = det_box_type

    @classmethod
    def from_configs(cls, det_cfg: dict, rec_cfg: dict, drop_score: float = 0.5,
                     rec_batch_num: int = 6, det_box_type: str | None = None) -> "TextSystem":
        """Two `jaxocr.infer.Predictor`s (each config's Global.checkpoints): the detector one image
        per call, the recogniser `rec_batch_num` crops (one compiled shape each). The box type
        defaults to the det config's PostProcess.box_type."""
        from jaxocr.config import ConfigError
        from jaxocr.infer import Predictor
        for cfg, kind, name in ((det_cfg, "det", "det_cfg"), (rec_cfg, "rec", "rec_cfg")):
            got = cfg["Architecture"].get("model_type", "rec")
            if got != kind:
                raise ConfigError(f"{name}: Architecture.model_type is {got!r}, expected {kind!r}")
        if det_box_type is None:
            det_box_type = (det_cfg.get("PostProcess") or {}).get("box_type", "quad")
        return cls(Predictor(det_cfg, batch_size=1), Predictor(rec_cfg, batch_size=rec_batch_num),
                   drop_score=drop_score, rec_batch_num=rec_batch_num, det_box_type=det_box_type)

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        """The image's boxes, filtered as Paddle's TextDetector and in reading order."""
        result = self.detector([image])[0]
        return sorted_boxes(filter_boxes(result["points"], image.shape, self.det_box_type))

    def crop(self, image: np.ndarray, box) -> np.ndarray:
        if self.det_box_type == "quad":
            return get_rotate_crop_image(image, box)
        return get_minarea_rect_crop(image, box)

    def recognize(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """(text, score) per crop, in the crops' order; batches of crops of similar width /
        height (ascending, ties in crop order), as Paddle's TextRecognizer."""
        ratios = np.array([c.shape[1] / float(c.shape[0]) for c in crops])
        order = np.argsort(ratios, kind="stable")
        results: list = [None] * len(crops)
        for start in range(0, len(crops), self.rec_batch_num):
            idx = order[start:start + self.rec_batch_num]
            batch = self.recognizer([crops[i] for i in idx])
            if len(batch) != len(idx):
                raise RuntimeError(f"recognizer returned {len(batch)} results for {len(idx)} "
                                   f"crops")
            for i, (text, score) in zip(idx, batch):
                results[i] = (text, float(np.mean(score)))  # Paddle averages per-char scores
        return results

    def __call__(self, image: np.ndarray) -> list[dict]:
        """HxWx3 uint8 BGR -> [{'transcription': str, 'points': [[x, y], ...] (int),
        'score': float}] in reading order, results under drop_score left out."""
        image = np.asarray(image)
        boxes = self.detect(image)
        if not boxes:
            return []
        recognized = self.recognize([self.crop(image, b) for b in boxes])
        return [{"transcription": text, "points": np.asarray(box).astype(np.int32).tolist(),
                 "score": score}
                for box, (text, score) in zip(boxes, recognized) if score >= self.drop_score]


# -- drawing -------------------------------------------------------------------------------------
def _font(path: str | None, size: int):
    from PIL import ImageFont
    size = max(1, int(size))
    try:
        if path is None:
            from jaxocr.data.synth import resolve_font
            path = resolve_font("DejaVuSans.ttf")
        return ImageFont.truetype(path, size)
    except (OSError, ImportError):
        return ImageFont.load_default()


def _text_in_box(canvas_wh, quad: np.ndarray, text: str, font_path) -> np.ndarray:
    """White RGB canvas with `text` in black, fitted to the quad's height (and its width), warped
    onto the quad (Paddle's draw_box_txt_fine; vertical boxes get the text turned)."""
    from PIL import Image, ImageDraw
    bh = max(1, int(np.linalg.norm(quad[0] - quad[3])))
    bw = max(1, int(np.linalg.norm(quad[0] - quad[1])))
    vertical = bh > 2 * bw and bh > 30
    tw, th = (bh, bw) if vertical else (bw, bh)
    tile = Image.new("RGB", (tw, th), (255, 255, 255))
    if text:
        font = _font(font_path, th * 0.99)
        length = ImageDraw.Draw(tile).textlength(text, font=font)
        if length > tw:
            font = _font(font_path, th * 0.99 * tw / length)
        ImageDraw.Draw(tile).text((0, 0), text, fill=(0, 0, 0), font=font)
    if vertical:
        tile = tile.transpose(Image.Transpose.ROTATE_270)
    src = np.float32([[0, 0], [bw, 0], [bw, bh], [0, bh]])
    m = cv2.getPerspectiveTransform(src, quad.astype(np.float32))
    return cv2.warpPerspective(np.asarray(tile), m, canvas_wh, flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255))


def draw_ocr(image: np.ndarray, results: list[dict], font_path: str | None = None) -> np.ndarray:
    """A BGR image twice as wide as `image`: on the left the image with each result's box
    filled in a random colour at half opacity, on the right the texts written into their boxes
    on white, outlined in the same colours (Paddle's draw_ocr_box_txt; colours seeded, so the
    same results draw the same). Font: `font_path`, else matplotlib's DejaVu Sans."""
    img = np.ascontiguousarray(np.asarray(image, np.uint8))
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    rgb = img[:, :, ::-1]
    left = rgb.copy()
    right = np.full((h, w, 3), 255, np.uint8)
    rnd = random.Random(0)
    for r in results:
        pts = np.asarray(r["points"], np.float32).reshape(-1, 2)
        color = tuple(rnd.randint(0, 255) for _ in range(3))
        poly = pts.round().astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(left, [poly], color)
        quad = pts if len(pts) == 4 else minarea_rect_corners(pts)
        right = cv2.bitwise_and(right, _text_in_box((w, h), quad, r.get("transcription", ""),
                                                    font_path))
        cv2.polylines(right, [poly], True, color, 1)
    left = cv2.addWeighted(rgb, 0.5, left, 0.5, 0)
    return np.ascontiguousarray(np.concatenate([left, right], axis=1)[:, :, ::-1])


def paddle_line(name: str, results: list[dict], with_score: bool = False) -> str:
    """One line of Paddle's system_results.txt: `name<TAB>` the JSON list of
    {"transcription", "points"} (ensure_ascii=False); with_score adds each "score" (rounded to
    6 places), which Paddle's file does not have."""
    rows = []
    for r in results:
        row = {"transcription": r["transcription"],
               "points": np.asarray(r["points"]).astype(np.int32).tolist()}
        if with_score:
            row["score"] = round(float(r["score"]), 6)
        rows.append(row)
    return name + "\t" + json.dumps(rows, ensure_ascii=False)


__all__ = ["TextSystem", "sorted_boxes", "reading_order", "get_rotate_crop_image",
           "get_minarea_rect_crop", "minarea_rect_corners", "order_points_clockwise",
           "clip_box", "filter_boxes", "draw_ocr", "paddle_line"]


def end_to_end_counts(results: list[dict], words: list[dict], normalize=str.lower,
                      iou: float = 0.5) -> np.ndarray:
    """The end-to-end counts of one image: (ground-truth words read right, ground-truth words,
    results, ground-truth words found by a box). A ground-truth word (`###` ones left out) is read right when a result's polygon
    overlaps it by IoU >= `iou` (one-to-one, greedy by IoU) and its text equals the word's,
    both through `normalize` (the recogniser's dictionary may fold case)."""
    from shapely.geometry import Polygon
    care = [w for w in words if w["transcription"] not in ("###", "*")]
    gts = [Polygon(w["points"]).buffer(0) for w in care]
    dets = [Polygon(r["points"]).buffer(0) for r in results]
    pairs = []
    for g, gp in enumerate(gts):
        for d, dp in enumerate(dets):
            union = gp.union(dp).area
            overlap = gp.intersection(dp).area / union if union else 0.0
            if overlap >= iou:
                pairs.append((overlap, g, d))
    used_g, used_d, right = set(), set(), 0
    for _, g, d in sorted(pairs, reverse=True):
        if g in used_g or d in used_d:
            continue
        used_g.add(g)
        used_d.add(d)
        right += normalize(results[d]["transcription"]) == normalize(care[g]["transcription"])
    return np.array([right, len(care), len(results), len(used_g)], np.int64)
