"""SynthSceneWords: recognition crops of synthetic scene words, cut as the det -> rec system cuts."""
import pickle

import numpy as np
import pytest
from shapely.geometry import Polygon

from jaxocr.config import load_config, parse_overrides
from jaxocr.data.charset import CharacterDict
from jaxocr.data.sources import build_source
from jaxocr.data.synth_words import SIDE_MOVE, SynthSceneWords, detector_like_box
from jaxocr.system import get_rotate_crop_image

G = {"max_text_length": 25}


def test_crops_are_scene_words_in_the_dictionary():
    cs = CharacterDict()  # lower-case letters and digits
    src = build_source({"name": "SynthSceneWords", "num_samples": 40, "seed": 3, "min_len": 2,
                        "max_len": 7, "image_size": [160, 224]}, "train", cs, G, seed=0)
    assert isinstance(src, SynthSceneWords) and len(src) == 40 == src.num_entries
    assert np.array_equal(src.epoch_indices(2), np.arange(40))
    widths = []
    for i in range(40):
        s = src.load(i)
        img, label = s["image"], s["label"]
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert 2 <= len(label) <= 7 and set(label) <= set(cs.characters), label
        scene = src.scenes.scene(i)
        assert label in [w["text"] for w in scene["words"]]
        assert scene["image"].shape[:2] == (160, 224)
        # the crop is the word (cut from its scene by a box near its ink box), not the scene
        assert img.shape[0] < 160 and img.shape[1] <= 224
        widths.append(img.shape[1] / img.shape[0])
    assert np.median(widths) > 1.5  # words read across: mostly wider than high


def test_deterministic_in_any_process_and_seeded():
    src = SynthSceneWords("abc123", num_samples=5, seed=11, max_len=5)
    clone = pickle.loads(pickle.dumps(src))
    for i in range(5):
        a, b = src.load(i), clone.load(i)
        assert a["label"] == b["label"] and np.array_equal(a["image"], b["image"])
    other = SynthSceneWords("abc123", num_samples=5, seed=12, max_len=5)
    assert any(not np.array_equal(src.load(i)["image"], other.load(i)["image"])
               for i in range(5))


def test_detector_like_boxes_move_every_side_within_bounds():
    rng = np.random.default_rng(0)
    quad = np.array([[40.0, 30.0], [140.0, 50.0], [136.0, 70.0], [36.0, 50.0]])  # rotated word
    height = np.linalg.norm(quad[3] - quad[0])
    ious, areas = [], []
    for _ in range(300):
        box = detector_like_box(quad, rng, 200, 120)
        assert box.shape == (4, 2) and box.dtype == np.float32
        g, d = Polygon(quad), Polygon(box)
        assert d.is_valid
        ious.append(g.intersection(d).area / g.union(d).area)
        areas.append(d.area / g.area)
    lo_end, hi_end = SIDE_MOVE["ends"]
    lo_tb, hi_tb = SIDE_MOVE["top_bottom"]
    width = np.linalg.norm(quad[1] - quad[0])
    biggest = (width + 2 * hi_end * height) * (height + 2 * hi_tb * height) / (width * height)
    assert min(ious) > 0.5          # the system's match threshold: every box still finds its word
    assert 1.0 < np.mean(areas) < biggest  # mostly outside the ink, as DB boxes are
    assert min(areas) < 1.0          # and sometimes cutting into it
    clipped = detector_like_box(np.array([[0.0, 0], [50, 0], [50, 10], [0, 10]]), rng, 60, 12)
    assert clipped[:, 0].min() >= 0 and clipped[:, 1].max() <= 11


def test_an_exact_box_crops_the_word_upright():
    src = SynthSceneWords(CharacterDict(), num_samples=3, seed=5, words_per_image=1,
                          max_angle=0.0, min_len=4, max_len=6)
    scene = src.scenes.scene(0)
    (word,) = scene["words"]
    crop = get_rotate_crop_image(scene["image"], word["points"])
    sample = src.load(0)
    assert sample["label"] == word["text"]
    # the jittered crop is about the exact crop's size (a DB box is about the word's)
    ratio = np.array(sample["image"].shape[:2]) / np.array(crop.shape[:2])
    assert np.all((ratio > 0.7) & (ratio < 1.9)), ratio


def test_options_are_config_keys_and_errors_name_the_source():
    cfg = load_config("configs/rec/quickstart_svtr_scenes.yml", parse_overrides([]))
    assert cfg["Train"]["dataset"]["name"] == "SynthSceneWords"
    with pytest.raises(ValueError, match="SynthSceneWords: max_len 30 exceeds"):
        build_source({"name": "SynthSceneWords", "max_len": 30}, "train", CharacterDict(), G,
                     seed=0)
    with pytest.raises(ValueError, match="SynthSceneWords: need 1 <= min_len <= max_len"):
        SynthSceneWords("abc", min_len=4, max_len=3)
