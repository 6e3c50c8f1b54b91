"""Recognition samples cut out of synthetic scenes, the way the det -> rec system cuts them.

    src = SynthSceneWords(charset, num_samples=48000, seed=1)
    sample = src.load(i)   # {'image': hxwx3 uint8 BGR word crop, 'label': its text, 'img_path'}

A recogniser trained on SynthTextLine reads clean grey lines; in a system it is handed crops of
scene words (textured, coloured backgrounds, rotation, perspective, blur, neighbours' ink, the
detector's loose or tight box). This source gives it those: sample i renders a small
SynthTextScene (scene i of `seed`, in the dictionary's characters, no don't-care words), picks
one of its words, moves the word's exact ink box the way a DB box differs from it (each side
out or in by a fraction of the word's height, the corners jittered), and cuts it as the system
does (`jaxocr.system.get_rotate_crop_image`: perspective warp, a tall crop turned a quarter).
Everything is drawn from `np.random.default_rng([seed, i])` streams, so sample i is the same in
any worker or process.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from jaxocr.data.source_api import EveryEntryEachEpoch
from jaxocr.data.charset import CharacterDict
from jaxocr.data.synth_scenes import SynthTextScene
from jaxocr.data.transforms import BadSample

# Side moves as fractions of the word's height (negative: into the word). A DB box, unclipped
# from the shrunk text kernel, usually sits a little outside the ink, more at the ends.
SIDE_MOVE = {"ends": (-0.05, 0.35), "top_bottom": (-0.08, 0.25)}
CORNER_JITTER = 0.03
WORD_STREAM = 7  # the rng stream of the box choice, apart from the scene's own


class SynthSceneWords(EveryEntryEachEpoch):
    """A recognition source of `num_samples` word crops from synthetic scenes (module doc)."""

    def __init__(self, charset: CharacterDict | str, num_samples: int = 10000, seed: int = 0,
                 min_len: int = 1, max_len: int = 10, image_size=(256, 256),
                 words_per_image=(1, 3), fonts=None, font_size=(16, 64),
                 max_angle: float = 30.0):
        chars = charset.characters if isinstance(charset, CharacterDict) else list(charset)
        chars = "".join(c for c in chars if len(c) == 1 and not c.isspace())
        if not 1 <= int(min_len) <= int(max_len):
            raise ValueError(f"SynthSceneWords: need 1 <= min_len <= max_len, got "
                             f"{min_len}..{max_len}")
        self.scenes = SynthTextScene(num_samples, seed=seed, image_size=image_size,
                                     words_per_image=words_per_image, fonts=fonts,
                                     dont_care_prob=0.0, charset=chars,
                                     word_len=(int(min_len), int(max_len)), font_size=font_size,
                                     max_angle=max_angle)
        self.seed = int(seed)
        self.num_samples = self.scenes.num_samples
        self.dropped: dict[str, int] = {}
        self.chars_removed = 0
        self.removed_chars: Counter = Counter()

    def __len__(self) -> int:
        return self.num_samples

    def load(self, i: int) -> dict:
        from jaxocr.system import get_rotate_crop_image
        scene = self.scenes.scene(i)
        if not scene["words"]:
            raise BadSample(f"synthetic scene {i} has no word")
        rng = np.random.default_rng([self.seed, int(i), WORD_STREAM])
        word = scene["words"][int(rng.integers(len(scene["words"])))]
        h, w = scene["image"].shape[:2]
        box = detector_like_box(np.asarray(word["points"], np.float64), rng, w, h)
        return {"image": get_rotate_crop_image(scene["image"], box), "label": word["text"],
                "img_path": f"synth-words://{int(i)}"}

    def __repr__(self) -> str:
        return f"SynthSceneWords({self.num_samples} crops of {self.scenes!r})"


def detector_like_box(quad: np.ndarray, rng: np.random.Generator, width: int,
                      height: int) -> np.ndarray:
    """The word's quad (TL, TR, BR, BL) with its ends and its top and bottom each moved along
    the word's own axes by SIDE_MOVE x its height, every corner then jittered by CORNER_JITTER x
    height, clipped to the image; float32 (4, 2)."""
    tl, tr, br, bl = quad
    along = (tr - tl + br - bl) / 2
    down = (bl - tl + br - tr) / 2
    word_h = max(float(np.linalg.norm(down)), 1.0)
    u = along / max(float(np.linalg.norm(along)), 1e-6)
    v = down / word_h
    left, right = rng.uniform(*SIDE_MOVE["ends"], 2) * word_h
    top, bottom = rng.uniform(*SIDE_MOVE["top_bottom"], 2) * word_h
    box = np.stack([tl - left * u - top * v, tr + right * u - top * v,
                    br + right * u + bottom * v, bl - left * u + bottom * v])
    box += rng.normal(0.0, CORNER_JITTER * word_h, (4, 2))
    box[:, 0] = np.clip(box[:, 0], 0, width - 1)
    box[:, 1] = np.clip(box[:, 1], 0, height - 1)
    return box.astype(np.float32)
