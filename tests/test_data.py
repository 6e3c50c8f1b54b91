"""Recognition data layer: charset, synthetic renderer, sources, transforms."""
import math
import os
import pickle
import threading

import cv2
import numpy as np
import pytest

from jaxocr.data.charset import CharacterDict
from jaxocr.data.fixtures import write_label_file_dataset, write_lmdb_dataset
from jaxocr.data.sources import (KNOWN_SOURCES, LMDBDataSet, SimpleDataSet, build_source)
from jaxocr.data.synth import SynthTextLine, matplotlib_font_dir
from jaxocr.data.transforms import (BadSample, RecAug, RecResizeImg, build_transforms, jitter,
                                    resize_norm_img)

ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"
G = {"max_text_length": 25}
REC_OPS = [
    {"DecodeImage": {"img_mode": "BGR", "channel_first": False}},
    {"RecAug": None},
    {"CTCLabelEncode": None},
    {"RecResizeImg": {"image_shape": [3, 32, 100]}},
    {"KeepKeys": {"keep_keys": ["image", "label", "length"]}},
]


# ---------------------------------------------------------------------------------- charset
def test_default_charset_encode_decode():
    cs = CharacterDict()
    assert cs.num_classes == 37 and len(cs.characters) == 36
    assert cs.encode("a0z") == [11, 1, 36]
    assert cs.encode("AbC") == cs.encode("abc") == [11, 12, 13]  # lower-cased
    assert cs.encode("ab-c") is None and cs.encode("a b") is None  # strict by default
    assert cs.encode("Ab-c", skip_unknown=True) == [11, 12, 13]  # PaddleOCR's: skipped
    assert cs.encode_label("ab-c", 25) == ([11, 12, 13], None)
    assert cs.encode_label("ab-c", 25, "drop") == (None, "unknown_char")
    assert cs.encode_label("-#", 25) == (None, "unknown_char")  # nothing left
    assert cs.encode_label("", 25) == (None, "empty")
    assert cs.decode([0, 11, 0, 12, 13, 0, 0]) == "abc"
    assert cs.decode([99, -1, 1]) == "0"  # out of range skipped
    assert cs.decode(cs.encode("hello42")) == "hello42"


def test_dict_file_charset(tmp_path):
    p = tmp_path / "dict.txt"
    p.write_bytes("a\r\nB\nä\n中\n".encode("utf-8"))
    cs = CharacterDict(p, use_space_char=True)
    assert cs.characters == ["a", "B", "ä", "中", " "]
    assert cs.num_classes == 6
    assert cs.encode("B a中") == [2, 5, 1, 4]
    assert cs.encode("b") is None  # no lower-casing with a dict file
    assert cs.decode([4, 3, 0, 5]) == "中ä "
    no_space = CharacterDict.from_config({"character_dict_path": str(p), "use_space_char": False})
    assert no_space.num_classes == 5 and no_space.encode("a a") is None
    assert CharacterDict.from_config({"character_dict_path": None}).num_classes == 37
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        CharacterDict(tmp_path / "nope.txt")


def test_paddleocr_bundled_dictionaries_resolve_by_their_repository_path(
        tmp_path, monkeypatch, caplog):
    """A config naming PaddleOCR's own dictionaries by their path in its repository gets
    jaxocr's copy of the file (logged) where no such file exists; a file that exists wins."""
    import logging
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="jaxocr"):
        keys = CharacterDict.from_config({"character_dict_path": "ppocr/utils/ppocr_keys_v1.txt",
                                          "use_space_char": True})
    assert keys.num_classes == 6625  # 6,623 characters, the space and the blank
    assert "using PaddleOCR's, as jaxocr ships it" in caplog.text and "ppocr_keys_v1" in caplog.text
    en = CharacterDict("./ppocr/utils/en_dict.txt", use_space_char=True)
    assert en.num_classes == 97 and en.characters[:10] == list("0123456789")
    assert CharacterDict("/opt/PaddleOCR/ppocr/utils/dict/japan_dict.txt").num_classes > 4000
    assert CharacterDict("ppocr/utils/ic15_dict.txt").characters == list(
        "0123456789abcdefghijklmnopqrstuvwxyz")
    own = tmp_path / "ppocr" / "utils"
    own.mkdir(parents=True)
    (own / "en_dict.txt").write_text("x\ny\n")
    assert CharacterDict("ppocr/utils/en_dict.txt").characters == ["x", "y"]
    with pytest.raises(FileNotFoundError, match="ppocr/utils/no_such_dict.txt.*e.g."):
        CharacterDict("ppocr/utils/no_such_dict.txt")


# ---------------------------------------------------------------------------------- synth
def test_synth_deterministic_and_distinct():
    a = SynthTextLine(CharacterDict(), num_samples=50, seed=7)
    b = pickle.loads(pickle.dumps(SynthTextLine(CharacterDict(), num_samples=50, seed=7)))
    for i in (0, 13, 49):
        img_a, lab_a = a.render(i)
        img_b, lab_b = b.render(i)
        assert lab_a == lab_b and np.array_equal(img_a, img_b)
    images = [a.render(i)[0] for i in range(6)]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert images[i].shape != images[j].shape or not np.array_equal(images[i], images[j])
    other_seed = SynthTextLine(CharacterDict(), num_samples=50, seed=8)
    assert not np.array_equal(other_seed.render(0)[0], a.render(0)[0]) or \
        other_seed.render(0)[1] != a.render(0)[1]
    with pytest.raises(IndexError):
        a.render(50)
    # threads (each with its own font cache) render the same pixels
    out = {}
    threads = [threading.Thread(target=lambda t=t: out.update(
        {i: a.render(i) for i in range(t, 20, 2)})) for t in range(2)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    for i in range(20):
        assert out[i][1] == b.render(i)[1] and np.array_equal(out[i][0], b.render(i)[0])


def test_synth_dark_text_on_light_background():
    s = SynthTextLine(CharacterDict(), num_samples=40, seed=1)
    assert all(p.startswith(matplotlib_font_dir()) for p in s.font_paths)
    cs = CharacterDict()
    for i in range(40):
        img, label = s.render(i)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert 32 <= img.shape[0] <= 48 and img.shape[1] >= 8
        assert 1 <= len(label) <= 10 and cs.encode(label) is not None
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        background = np.median(gray)
        assert background > 140, (i, background)
        dark = gray < background - 60
        assert dark.mean() > 0.01, (i, label, dark.mean())  # visible glyph strokes
        # the strokes span most of the text: dark pixels in several separate columns
        assert dark.any(axis=0).sum() >= 3
        assert gray[:, :2].mean() > background - 25  # margins are background


# ---------------------------------------------------------------------------------- sources
def test_simple_dataset_filters_and_bad_images(tmp_path):
    label_file = write_label_file_dataset(tmp_path, 30, ALNUM, seed=3, corrupt=2, bad_labels=3)
    with open(label_file, "a", encoding="utf-8") as f:
        f.write("images/img_000000.png\t" + "a" * 26 + "\n")  # too long (max 25)
        f.write("no delimiter on this line\n")                  # malformed
        f.write("images/missing.png\tabc\n")                    # missing image file
        f.write("\n")                                           # blank: ignored
    cs = CharacterDict()
    cfg = {"name": "SimpleDataSet", "data_dir": str(tmp_path), "label_file_list": [label_file]}
    src = build_source(cfg, "train", cs, G, seed=0)
    assert isinstance(src, SimpleDataSet)
    # PaddleOCR's default: the 3 labels with a character outside the dictionary are kept, the
    # character skipped; the missing image is found at build time
    assert src.dropped == {"too_long": 1, "malformed": 1, "missing_image": 1}
    assert src.chars_removed == 3 and sum(src.removed_chars.values()) == 3
    assert len(src) == src.num_entries == 30
    assert "images/missing.png" not in src.paths

    transform = build_transforms(REC_OPS, cs, G)
    bad_decode, good, shortened = 0, 0, 0
    for i in range(len(src)):
        sample = src.load(i)
        assert isinstance(sample["image_bytes"], bytes)
        try:
            out = transform(sample, np.random.default_rng(i))
        except BadSample as e:
            assert "decode" in str(e)
            bad_decode += 1
            continue
        good += 1
        kept = "".join(c for c in src.labels[i] if c in cs)
        shortened += kept != src.labels[i]
        assert cs.decode(out["label"][:out["length"]]) == kept
    assert bad_decode == 2 and good == 30 - 2 and shortened >= 1

    # an image that disappears after the build: BadSample in load (the pipeline substitutes)
    os.remove(os.path.join(tmp_path, src.paths[5]))
    with pytest.raises(BadSample, match=src.paths[5]):
        src.load(5)

    # unknown_chars: drop (jaxocr's earlier rule) drops those 3 samples instead
    strict = build_source({**cfg, "unknown_chars": "drop"}, "train", cs, G, seed=0)
    assert strict.dropped == {"unknown_char": 3, "too_long": 1, "malformed": 1,
                              "missing_image": 2}
    assert len(strict) == 30 - 3 - 1 and strict.chars_removed == 0
    assert all(cs.encode(lab) is not None for lab in strict.labels)
    with pytest.raises(ValueError, match="Eval.dataset.unknown_chars.*skip, drop"):
        build_source({**cfg, "unknown_chars": "keep"}, "eval", cs, G, seed=0)


def test_bad_label_lines_and_paths_outside_data_dir_are_counted_skips_named_by_line(
        tmp_path, caplog):
    data = tmp_path / "data"
    label_file = write_label_file_dataset(data, 6, ALNUM, seed=3)
    secret = tmp_path / "secret.png"
    secret.write_bytes(open(os.path.join(data, "images", "img_000000.png"), "rb").read())
    with open(label_file, "ab") as f:
        f.write(b"images/img_000001.png abc\n")        # line 7: a space, not the tab
        f.write(b"images/img_\xff.png\tabc\n")          # line 8: not UTF-8
        f.write(f"{secret}\tabc\n".encode())           # line 9: absolute, outside data_dir
        f.write(b"../secret.png\tabc\n")               # line 10: '..' out of data_dir
        f.write(b"images/../images/img_000002.png\tab\n")  # inside after all: kept
    with caplog.at_level("WARNING", logger="jaxocr"):
        src = build_source({"name": "SimpleDataSet", "data_dir": str(data),
                            "label_file_list": [label_file]}, "train", CharacterDict(), G, 0)
    assert src.dropped == {"malformed": 2, "outside_data_dir": 2}
    assert len(src) == 7 and str(secret) not in src.paths
    assert f"{label_file}:7 (no '\\t' between image path and label)" in caplog.text
    assert f"{label_file}:8 (not UTF-8)" in caplog.text
    assert f"{label_file}:9 {secret}" in caplog.text and f"{label_file}:10 ../secret.png" in \
        caplog.text and "leads outside data_dir" in caplog.text


def _lmdb(tmp_path, n=20):
    write_lmdb_dataset(tmp_path / "lmdb" / "a", n, ALNUM, seed=1)
    return tmp_path / "lmdb", tmp_path / "lmdb" / "a" / "data.mdb"


def test_a_truncated_or_corrupt_lmdb_is_one_clear_error_not_a_crash(tmp_path):
    from jaxocr.data.sources import DatasetError
    root, mdb = _lmdb(tmp_path)
    full = mdb.read_bytes()
    mdb.write_bytes(full[:len(full) // 2])  # an interrupted copy: reading it would be SIGBUS
    section = {"name": "LMDBDataSet", "data_dir": str(root)}
    with pytest.raises(DatasetError, match=r"data.mdb is truncated \(\d+ bytes of the \d+ its "
                                           r"header records"):
        build_source(section, "train", CharacterDict(), G, 0)
    mdb.write_bytes(b"not an lmdb" * 1000)
    with pytest.raises(DatasetError, match=r"cannot be opened \(.*File is not an LMDB file\)"):
        build_source(section, "train", CharacterDict(), G, 0)


def test_an_lmdb_without_num_samples_is_one_clear_error_a_missing_label_a_bad_sample(tmp_path):
    import lmdb
    from jaxocr.data.sources import DatasetError
    env = lmdb.open(str(tmp_path / "x"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"label-000000001", b"abc")
    env.close()
    with pytest.raises(DatasetError, match="no valid 'num-samples' key"):
        build_source({"name": "LMDBDataSet", "data_dir": str(tmp_path)}, "train",
                     CharacterDict(), G, 0)
    env = lmdb.open(str(tmp_path / "y"), map_size=1 << 22)
    with env.begin(write=True) as txn:  # label 2 without its image
        txn.put(b"num-samples", b"2")
        txn.put(b"image-000000001", b"png")
        txn.put(b"label-000000001", b"abc")
        txn.put(b"label-000000002", b"abd")
    env.close()
    src = build_source({"name": "LMDBDataSet", "data_dir": str(tmp_path / "y")}, "train",
                       CharacterDict(), G, 0)
    assert len(src) == 2
    with pytest.raises(BadSample, match="no image-000000002"):
        src.load(1)


def test_simple_dataset_ratio_and_missing_label_file(tmp_path):
    label_file = write_label_file_dataset(tmp_path, 40, ALNUM, seed=0)
    cs = CharacterDict()
    cfg = {"name": "SimpleDataSet", "data_dir": str(tmp_path),
           "label_file_list": [label_file, label_file], "ratio_list": [0.5, 0.25]}
    a = build_source(cfg, "train", cs, G, seed=1)
    b = build_source(cfg, "train", cs, G, seed=1)
    c = build_source(cfg, "train", cs, G, seed=2)
    # every line kept; each epoch draws round(40 * 0.5) + round(40 * 0.25) of them
    assert a.num_entries == 80 and len(a) == 20 + 10 and a.paths == b.paths
    for epoch in range(3):
        ia = a.epoch_indices(epoch)
        assert len(ia) == len(a) and np.array_equal(ia, b.epoch_indices(epoch))
        assert not np.array_equal(ia, c.epoch_indices(epoch))
    assert not np.array_equal(a.epoch_indices(0), a.epoch_indices(1))
    missing = str(tmp_path / "does_not_exist.txt")
    with pytest.raises(FileNotFoundError, match="does_not_exist.txt"):
        build_source({**cfg, "label_file_list": [label_file, missing]}, "train", cs, G, seed=1)
    with pytest.raises(ValueError, match="SimpleDataSet.*LMDBDataSet.*SynthTextLine"):
        build_source({"name": "TFRecordDataSet"}, "train", cs, G, seed=1)
    assert KNOWN_SOURCES == ("SimpleDataSet", "LMDBDataSet", "TFDSDataSet", "SynthTextLine",
                             "SynthSceneWords", "SynthTextScene", "COCODataSet", "SynthShapes")


def test_lmdb_dataset_one_based_and_threads(tmp_path):
    import lmdb

    labels_a = write_lmdb_dataset(tmp_path / "train" / "a", 12, ALNUM, seed=5, bad_labels=2)
    labels_b = write_lmdb_dataset(tmp_path / "train" / "sub" / "b", 5, ALNUM, seed=6)
    # one more LMDB whose num-samples promises a label that is not there
    env = lmdb.open(str(tmp_path / "train" / "c"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"num-samples", b"2")
        ok, png = cv2.imencode(".png", np.full((32, 40, 3), 200, np.uint8))
        txn.put(b"image-000000001", png.tobytes())
        txn.put(b"label-000000001", b"zz9")
        txn.put(b"image-000000002", png.tobytes())
    env.close()

    cs = CharacterDict()
    src = build_source({"name": "LMDBDataSet", "data_dir": str(tmp_path / "train")},
                       "train", cs, G, seed=0)
    assert isinstance(src, LMDBDataSet)
    root = os.path.realpath(tmp_path / "train")
    assert [os.path.relpath(d, root) for d in src.dirs] == ["a", "c", "sub/b"]
    # the 2 labels with an outside character are kept (PaddleOCR), the character skipped later
    assert src.dropped == {"missing_label": 1} and src.chars_removed == 2
    assert len(src) == src.num_entries == 12 + 1 + 5
    assert np.array_equal(src.epoch_indices(3), np.arange(len(src)))
    got = [src.load(i)["label"] for i in range(len(src))]
    assert got == labels_a + ["zz9"] + labels_b
    strict = build_source({"name": "LMDBDataSet", "data_dir": str(tmp_path / "train"),
                           "unknown_chars": "drop"}, "train", cs, G, seed=0)
    assert strict.dropped == {"unknown_char": 2, "missing_label": 1} and len(strict) == 16
    kept_a = [lab for lab in labels_a if cs.encode(lab) is not None]
    assert [strict.load(i)["label"] for i in range(16)] == kept_a + ["zz9"] + labels_b
    # key 1 is the first sample: its image is SynthTextLine's sample 0
    first = cv2.imdecode(np.frombuffer(src.load(0)["image_bytes"], np.uint8), cv2.IMREAD_COLOR)
    ref, ref_label = SynthTextLine(ALNUM, 12, seed=5, mixed_case=False).render(0)
    assert ref_label == labels_a[0] and np.array_equal(first, ref)

    clone = pickle.loads(pickle.dumps(src))  # envs are not pickled; reopened lazily
    results, errors = {}, []

    def work(t):
        try:
            results[t] = [clone.load(i)["label"] for i in range(t, len(src), 2)]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    assert not errors
    assert results[0] == got[0::2] and results[1] == got[1::2]
    again = LMDBDataSet(str(tmp_path / "train"), cs, 25)  # same LMDBs, same process: shared
    assert again.load(3)["label"] == got[3]
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no LMDB"):
        LMDBDataSet(str(tmp_path / "empty_dir"), cs, 25)


def test_synth_source_from_config():
    cs = CharacterDict()
    train = build_source({"name": "SynthTextLine", "num_samples": 20}, "train", cs, G, seed=4)
    evals = build_source({"name": "SynthTextLine"}, "eval", cs, G, seed=4)
    assert len(train) == 20 and len(evals) == 1000 and train.dropped == {}
    assert isinstance(train, SynthTextLine) and train.num_entries == 20
    assert np.array_equal(train.epoch_indices(5), np.arange(20)) and train.chars_removed == 0
    assert train.load(0)["label"] != evals.load(0)["label"] or \
        not np.array_equal(train.load(0)["image"], evals.load(0)["image"])
    with pytest.raises(ValueError, match="max_text_length"):
        build_source({"name": "SynthTextLine", "max_len": 30}, "train", cs, G, seed=4)


# ---------------------------------------------------------------------------------- transforms
def test_rec_resize_img_exact():
    img = np.zeros((16, 40, 3), np.uint8)
    img[:, :20] = 255
    out, ratio = resize_norm_img(img, [3, 32, 100])
    assert out.shape == (32, 100, 3) and out.dtype == np.float32
    resized_w = math.ceil(32 * 40 / 16)  # 80
    assert ratio == pytest.approx(resized_w / 100)
    assert np.all(out[:, resized_w:] == 0.0)  # zero padding on the right
    assert np.all(out[:, :38] == 1.0) and np.all(out[:, 42:resized_w] == -1.0)
    # identical to PaddleOCR's CHW arithmetic, transposed
    ref = cv2.resize(img, (resized_w, 32)).astype("float32").transpose((2, 0, 1)) / 255
    ref -= 0.5
    ref /= 0.5
    assert np.array_equal(out[:, :resized_w], ref.transpose(1, 2, 0))

    wide = np.full((10, 400, 3), 128, np.uint8)
    data = RecResizeImg([3, 32, 100])({"image": wide})
    assert data["image"].shape == (32, 100, 3) and data["valid_ratio"] == 1.0
    assert data["image"].dtype == np.uint8 and np.all(data["image"] == 128)
    assert data["valid_width"] == 100  # normalised on the device: (128/255 - 0.5) / 0.5
    gray = RecResizeImg([1, 32, 100])({"image": wide})["image"]
    assert gray.shape == (32, 100, 1)


def test_rec_aug_shape_dtype_deterministic():
    img, _ = SynthTextLine(ALNUM, 10, seed=2, min_len=5, mixed_case=False).render(3)
    aug = RecAug()
    outs = []
    for seed in range(12):
        a = aug({"image": img.copy()}, np.random.default_rng(seed))["image"]
        b = aug({"image": img.copy()}, np.random.default_rng(seed))["image"]
        assert np.array_equal(a, b)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
        assert a.shape[1] == img.shape[1] and img.shape[0] - 8 <= a.shape[0] <= img.shape[0]
        outs.append(a)
    assert sum(not (o.shape == img.shape and np.array_equal(o, img)) for o in outs) >= 6
    no_crop = RecAug(crop_prob=0.0, tia_prob=1.0, blur_prob=1.0, noise_prob=1.0, hsv_aug_prob=1.0,
                     jitter_prob=1.0, reverse_prob=0.0)
    for seed in range(4):
        out = no_crop({"image": img}, np.random.default_rng(seed))["image"]
        assert out.shape == img.shape and out.dtype == np.uint8
        assert not np.array_equal(out, img)


def test_svtr_rec_aug_stages_are_seeded_and_keep_an_image():
    from jaxocr.data.transforms import SVTRRecAug, svtr_aug
    img, _ = SynthTextLine(ALNUM, 10, seed=2, min_len=5, mixed_case=False).render(3)
    assert np.array_equal(SVTRRecAug(0, 0.0, 0.0, 0.0)({"image": img.copy()},
                                                      np.random.default_rng(0))["image"], img)
    changed = 0
    for aug_type in (0, 1):
        every = SVTRRecAug(aug_type, 1.0, 1.0, 1.0)
        for seed in range(6):
            a = every({"image": img.copy()}, np.random.default_rng(seed))["image"]
            b = every({"image": img.copy()}, np.random.default_rng(seed))["image"]
            assert np.array_equal(a, b)
            assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape) > 0
            changed += not (a.shape == img.shape and np.array_equal(a, img))
    assert changed == 12
    rng = np.random.default_rng(3)
    h, w = img.shape[:2]
    for _ in range(5):  # a rotation grows the canvas to hold the rotated line
        rotated = svtr_aug.rotate(img, rng, 45)
        assert rotated.shape[0] >= h - 1 and rotated.shape[0] * rotated.shape[1] >= h * w - w - h
    assert svtr_aug.color_jitter(img, rng).shape == img.shape
    assert svtr_aug.rescale(img, rng, 4).shape == img.shape
    blurred = svtr_aug.motion_blur(img, np.random.default_rng(1), 60)
    assert blurred.shape == img.shape and not np.array_equal(blurred, img)


def test_jitter_matches_paddle_loop():
    img = np.random.default_rng(0).integers(0, 256, (800, 900, 3), dtype=np.uint8)
    shifts = []
    for seed in range(3):
        out = jitter(img, np.random.default_rng(seed))
        s = int(np.random.default_rng(seed).random() * 800 * 0.01)
        ref = img.copy()
        for i in range(s):  # PaddleOCR rec_img_aug.jitter
            ref[i:, i:, :] = img[:800 - i, :900 - i, :]
        assert np.array_equal(out, ref)
        shifts.append(s)
    assert max(shifts) >= 4


def test_full_rec_chain_and_infer_mode():
    cs = CharacterDict()
    s = SynthTextLine(cs, 8, seed=0)
    transform = build_transforms(REC_OPS, cs, G)
    for i in range(8):
        sample = s.load(i)
        ok, png = cv2.imencode(".png", sample["image"])
        for source in ({"image": sample["image"], "label": sample["label"]},
                       {"image_bytes": png.tobytes(), "label": sample["label"]}):
            out = transform(source, np.random.default_rng(i))
            assert list(out) == ["image", "label", "length", "valid_width"]
            assert out["image"].shape == (32, 100, 3) and out["image"].dtype == np.uint8
            assert 0 < out["valid_width"] <= 100 and np.all(out["image"][:, out["valid_width"]:] == 0)
            assert out["label"].shape == (25,) and out["label"].dtype == np.int32
            n = int(out["length"])
            assert n == len(sample["label"]) and np.all(out["label"][n:] == 0)
            assert cs.decode(out["label"]) == sample["label"].lower()

    infer = build_transforms(REC_OPS, cs, G, infer=True)
    out = infer({"image_bytes": png.tobytes()}, np.random.default_rng(0))
    assert list(out) == ["image", "valid_width"] and out["image"].shape == (32, 100, 3)
    with pytest.raises(BadSample, match="decode"):
        infer({"image_bytes": b"not an image"}, np.random.default_rng(0))
    # PaddleOCR's CTCLabelEncode skips characters outside the dictionary...
    out = transform({"image": sample["image"], "label": "aB#c"}, np.random.default_rng(0))
    assert int(out["length"]) == 3 and cs.decode(out["label"]) == "abc"
    # ...and rejects a label with nothing left
    with pytest.raises(BadSample, match="outside the dictionary.*no character is left"):
        transform({"image": sample["image"], "label": "#@"}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="FancyAug.*DecodeImage"):
        build_transforms([{"FancyAug": None}], cs, G)
    with pytest.raises(ValueError, match="RecAug.*blurr_prob"):
        build_transforms([{"RecAug": {"blurr_prob": 0.1}}], cs, G)


def test_rec_con_aug_joins_lines_as_paddleocr():
    """PaddleOCR's RecConAug: each ext sample resized to the line height and appended while
    the joined aspect ratio stays within W/H and the label within max_text_length."""
    from jaxocr.data.transforms import RecConAug
    rng = np.random.default_rng(0)
    img = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    first = img(32, 64)
    ext = [{"image": img(32, 96), "label": "cd"}, {"image": img(16, 48), "label": "ef"},
           {"image": img(32, 100), "label": "gh"}]  # ratios 2 + 3 + 3 fit 10; + 3.125 not
    join = RecConAug(prob=1.0, image_shape=[32, 320, 3], ext_data_num=3)
    out = join({"image": first, "label": "ab", "ext_data": [dict(e) for e in ext]},
               np.random.default_rng(0))
    assert "ext_data" not in out and out["label"] == "abcdef"
    assert out["image"].shape == (32, 64 + 96 + 96, 3)
    assert np.array_equal(out["image"][:, :160], np.concatenate([first, ext[0]["image"]], 1))
    assert np.array_equal(out["image"][:, 160:], cv2.resize(ext[1]["image"], (96, 32)))
    short = RecConAug(prob=1.0, image_shape=[32, 320, 3], max_text_length=5, ext_data_num=3)
    assert short({"image": first, "label": "ab", "ext_data": [dict(e) for e in ext]},
                 np.random.default_rng(0))["label"] == "abcd"
    never = RecConAug(prob=0.0, ext_data_num=3)
    kept = never({"image": first, "label": "ab", "ext_data": ext}, np.random.default_rng(0))
    assert kept["image"] is first and kept["label"] == "ab" and "ext_data" not in kept
    # half the samples at PaddleOCR's prob 0.5
    half = RecConAug(prob=0.5, ext_data_num=1)
    joined = sum(half({"image": first, "label": "ab", "ext_data": [dict(ext[0])]},
                      np.random.default_rng(s))["label"] != "ab" for s in range(400))
    assert 160 < joined < 240


def test_rec_con_aug_draws_its_ext_data_from_the_set_and_the_sample_seed(tmp_path):
    """The pipeline fetches ext_data_num other samples through the first ext_op_transform_idx
    ops, as SimpleDataSet.get_ext_data; the same sample, epoch and seed give the same join."""
    from jaxocr.data.pipeline import SampleMaker
    label_file = write_label_file_dataset(tmp_path, 20, ALNUM, seed=0, min_len=2, max_len=4,
                                          corrupt=3)
    cs = CharacterDict()
    source = build_source({"name": "SimpleDataSet", "data_dir": str(tmp_path),
                           "label_file_list": [label_file]}, "train", cs, G, seed=1)
    ops = [{"DecodeImage": {"img_mode": "BGR", "channel_first": False}},
           {"RecConAug": {"prob": 1.0, "ext_data_num": 2, "image_shape": [32, 320, 3]}},
           {"CTCLabelEncode": None},
           {"SVTRRecResizeImg": {"image_shape": [3, 32, 320], "padding": True}},
           {"KeepKeys": {"keep_keys": ["image", "label", "length"]}}]
    transform = build_transforms(ops, cs, G, ext_op_transform_idx=1)
    assert transform.ext_data_num == 2 and [type(op).__name__ for op in
                                            transform.load_ops().ops] == ["DecodeImage"]
    maker = SampleMaker(source, transform, seed=7, train=True)
    lengths = [int(source.load(i)["label"].__len__()) for i in range(len(source))]
    rows = [maker.load(i, 0) for i in range(len(source))]
    again = [maker.load(i, 0) for i in range(len(source))]
    for a, b in zip(rows, again):
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    joined = [int(r["length"]) > n for r, n in zip(rows, lengths)]
    assert sum(joined) >= len(rows) // 2  # (short lines: most have room for two more)
    assert all(int(r["length"]) <= 25 for r in rows)
    other_epoch = [int(maker.load(i, 1)["length"]) for i in range(len(source))]
    assert other_epoch != [int(r["length"]) for r in rows]
