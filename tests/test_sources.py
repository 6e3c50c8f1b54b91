"""Dataset sources against PaddleOCR 2.7's label rules: skipped characters, max_text_length,
CTC-infeasible labels, per-epoch ratio_list subsets, image paths checked at build time."""
import logging
import os

import numpy as np
import pytest

from jaxocr.config import KNOWN
from jaxocr.data.charset import CharacterDict
from jaxocr.data.fixtures import write_label_file_dataset, write_lmdb_dataset
from jaxocr.data.sources import (LabelFilter, SimpleDataSet, build_source, ctc_frames_needed,
                                 missing_files)
from jaxocr.data.transforms import BadSample, CTCLabelEncode

ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"
G = {"max_text_length": 25}


def paddle_encode(text, chars, lower, max_text_len):
    """BaseRecLabelEncode.encode of PaddleOCR 2.7 (ppocr/data/imaug/label_ops.py), restated:
    length checked on the label as written, then lower-cased, unknown characters skipped."""
    if len(text) == 0 or len(text) > max_text_len:
        return None
    if lower:
        text = text.lower()
    index = {c: i + 1 for i, c in enumerate(chars)}  # 'blank' is 0
    ids = [index[c] for c in text if c in index]
    return ids or None


def _write(tmp_path, lines, name="label.txt", images=True):
    os.makedirs(tmp_path / "img", exist_ok=True)
    for rel, _ in lines:
        if images:
            (tmp_path / rel).write_bytes(b"x")
    path = tmp_path / name
    path.write_text("".join(f"{rel}\t{lab}\n" for rel, lab in lines), encoding="utf-8")
    return str(path)


LABELS = ["abc", "ABC", "a#b", "#", "#@", "", "a" * 25, "a" * 26, "a" * 24 + "#",
          "a" * 25 + "#", "#" * 26, "ab c", "Straße", "İi"]


def test_encode_label_matches_paddleocr(tmp_path):
    cs = CharacterDict()
    for text in LABELS:
        ids, problem = cs.encode_label(text, 25)
        assert ids == paddle_encode(text, ALNUM, True, 25), text
        assert (problem is None) == (ids is not None)
    # max_text_length applies to the label as written, before characters are skipped (PaddleOCR)
    assert cs.encode_label("a" * 25 + "#", 25) == (None, "too_long")
    assert cs.encode_label("a" * 24 + "#", 25) == ([11] * 24, None)
    d = tmp_path / "dict.txt"
    d.write_text("a\nB\n中\n", encoding="utf-8")
    cd = CharacterDict(d, use_space_char=True)
    for text in ["aB 中", "ab", "b", "中#中", " "]:
        assert cd.encode_label(text, 4)[0] == paddle_encode(text, ["a", "B", "中", " "], False, 4)
    with pytest.raises(ValueError, match="skip.*drop"):
        cs.encode_label("a", 25, "ignore")


def test_ctc_label_encode_agrees_with_the_source_filter():
    cs = CharacterDict()
    for mode in ("skip", "drop"):
        keep = LabelFilter(cs, 25, mode)
        enc = CTCLabelEncode(cs, 25, mode)
        for text in LABELS:
            kept = keep(text)
            if kept:
                out = enc({"label": text})
                n = int(out["length"])
                assert out["label"].shape == (25,) and np.all(out["label"][n:] == 0)
                assert list(out["label"][:n]) == cs.encode(text, skip_unknown=True)
            else:
                with pytest.raises(BadSample):
                    enc({"label": text})
    keep = LabelFilter(cs, 25, "skip")
    for text in LABELS:
        keep(text)
    assert keep.dropped == {"empty": 1, "too_long": 3, "unknown_char": 2}
    # kept with characters removed: a#b, a*24#, "ab c", Straße, İi (the combining dot)
    assert keep.chars_removed == 5 and keep.removed_chars["#"] == 2
    assert CTCLabelEncode(cs, 25)({"label": "x#y"})["length"] == 2  # the default is skip


def test_unknown_chars_key_is_known_to_the_config():
    assert "unknown_chars" in KNOWN["Train.dataset"] and "unknown_chars" in KNOWN["Eval.dataset"]


def test_ctc_frames_needed_and_infeasible_labels_dropped_in_train_only(tmp_path):
    assert ctc_frames_needed([]) == 0 and ctc_frames_needed([1, 2, 3]) == 3
    assert ctc_frames_needed([1, 1, 2, 2, 2]) == 5 + 3 and ctc_frames_needed([1, 2, 1]) == 3
    lines = [("img/0.png", "abcdef"),   # 6 frames
             ("img/1.png", "aabbcc"),   # 9
             ("img/2.png", "abcdefg"),  # 7
             ("img/3.png", "a#a"),      # skipped to "aa": 3 frames (counted after the skip)
             ("img/4.png", "aaa")]      # 5
    label_file = _write(tmp_path, lines)
    cs = CharacterDict()
    cfg = {"name": "SimpleDataSet", "data_dir": str(tmp_path), "label_file_list": [label_file]}
    train = build_source(cfg, "train", cs, G, seed=0, max_ctc_steps=6)
    assert train.labels == ["abcdef", "a#a", "aaa"]
    assert train.dropped == {"too_long_for_ctc": 2}
    evals = build_source(cfg, "eval", cs, G, seed=0, max_ctc_steps=6)
    assert len(evals) == 5 and evals.dropped == {}
    assert len(build_source(cfg, "train", cs, G, seed=0)) == 5  # no T given: nothing dropped

    write_lmdb_dataset(tmp_path / "lmdb", 20, ALNUM, seed=1, min_len=1, max_len=10)
    lm_cfg = {"name": "LMDBDataSet", "data_dir": str(tmp_path / "lmdb")}
    full = build_source(lm_cfg, "train", cs, G, seed=0)
    short = build_source(lm_cfg, "train", cs, G, seed=0, max_ctc_steps=5)
    need = [ctc_frames_needed(cs.encode(full.load(i)["label"])) for i in range(len(full))]
    assert len(short) == sum(n <= 5 for n in need) < len(full)
    assert short.dropped == {"too_long_for_ctc": sum(n > 5 for n in need)}


def test_ratio_list_subset_redrawn_each_epoch(tmp_path):
    a = _write(tmp_path, [(f"img/a{i}.png", "ab") for i in range(50)], "a.txt")
    b = _write(tmp_path, [(f"img/b{i}.png", "cd") for i in range(31)], "b.txt")
    c = _write(tmp_path, [(f"img/c{i}.png", "ef") for i in range(7)], "c.txt")
    cs = CharacterDict()
    cfg = {"name": "SimpleDataSet", "data_dir": str(tmp_path), "label_file_list": [a, b, c],
           "ratio_list": [0.3, 1.0, 0.5]}
    src = build_source(cfg, "train", cs, G, seed=3)
    assert src.num_entries == 88
    assert len(src) == round(50 * 0.3) + 31 + round(7 * 0.5) == 15 + 31 + 4
    seen = set()
    for epoch in range(6):
        idx = src.epoch_indices(epoch)
        assert idx.dtype == np.int64 and len(idx) == len(src)
        assert np.all(np.diff(idx) > 0)  # ascending, no repeats
        first, second, third = idx[idx < 50], idx[(idx >= 50) & (idx < 81)], idx[idx >= 81]
        assert len(first) == 15 and len(third) == 4
        assert np.array_equal(second, np.arange(50, 81))  # ratio 1: the whole file
        assert {src.labels[i] for i in first} == {"ab"}
        seen.add(tuple(first))
        # layout-independent: the same subset when the source is built again
        assert np.array_equal(idx, SimpleDataSet(str(tmp_path), [a, b, c], cs, 25, seed=3,
                                                 ratio_list=[0.3, 1.0, 0.5]).epoch_indices(epoch))
    assert len(seen) == 6  # a new subset every epoch
    # a file's draw depends only on (seed, epoch, file index): other files do not change it
    alone = SimpleDataSet(str(tmp_path), [a], cs, 25, seed=3, ratio_list=[0.3])
    assert np.array_equal(alone.epoch_indices(2), src.epoch_indices(2)[:15])
    other_seed = SimpleDataSet(str(tmp_path), [a], cs, 25, seed=4, ratio_list=[0.3])
    assert not np.array_equal(other_seed.epoch_indices(2), alone.epoch_indices(2))
    # without ratios: every entry every epoch
    plain = SimpleDataSet(str(tmp_path), [a, c], cs, 25)
    assert len(plain) == plain.num_entries == 57
    assert np.array_equal(plain.epoch_indices(9), np.arange(57))
    # the per-epoch size is counted on the usable lines of each file
    d = _write(tmp_path, [(f"img/d{i}.png", "#" if i < 4 else "gh") for i in range(10)], "d.txt")
    part = SimpleDataSet(str(tmp_path), [d], cs, 25, ratio_list=0.5)
    assert part.num_entries == 6 and len(part) == 3 and part.dropped == {"unknown_char": 4}
    with pytest.raises(ValueError, match="epoch"):
        part.epoch_indices(-1)


def test_missing_images_dropped_at_build_with_one_warning(tmp_path, caplog):
    lines = [(f"img/{i}.png", "ab") for i in range(40)]
    label_file = _write(tmp_path, lines)
    for i in (3, 17, 18, 30, 31, 32, 39):
        os.remove(tmp_path / f"img/{i}.png")
    with open(label_file, "a") as f:
        f.write("img/17.png\tcd\n")  # the same missing image listed twice
    (tmp_path / "img" / "dir.png").mkdir()  # a directory is not an image file
    with open(label_file, "a") as f:
        f.write("img/dir.png\tef\n")
    cs = CharacterDict()
    cfg = {"name": "SimpleDataSet", "data_dir": str(tmp_path), "label_file_list": [label_file]}
    with caplog.at_level(logging.INFO, logger="jaxocr"):
        src = build_source(cfg, "train", cs, G, seed=0)
    assert src.dropped == {"missing_image": 9} and len(src) == 33
    assert all(os.path.isfile(os.path.join(tmp_path, p)) for p in src.paths)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "9 sample(s)" in text and "8 distinct" in text
    assert os.path.join(str(tmp_path), "img/3.png") in text and "img/39.png" not in text
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("Train.dataset SimpleDataSet: 33 samples; 0 kept" in m
               and "dropped: missing_image=9" in m for m in info)
    assert missing_files(str(tmp_path), ["img/0.png", "img/3.png", "img/3.png"]) == {"img/3.png"}


def test_build_log_counts_kept_and_dropped(tmp_path, caplog):
    label_file = write_label_file_dataset(tmp_path, 12, ALNUM, seed=2, bad_labels=3)
    with open(label_file, "a") as f:
        f.write("img/none.png\t" + "b" * 30 + "\n")
    cs = CharacterDict()
    cfg = {"name": "SimpleDataSet", "data_dir": str(tmp_path), "label_file_list": [label_file],
           "ratio_list": [0.5]}
    with caplog.at_level(logging.INFO, logger="jaxocr"):
        build_source(cfg, "eval", cs, G, seed=0)
    (msg,) = [r.getMessage() for r in caplog.records if "Eval.dataset" in r.getMessage()]
    assert "6 samples per epoch (of 12, ratio_list)" in msg
    assert "3 kept with characters outside the dictionary removed (" in msg
    assert "dropped: too_long=1" in msg


def test_sources_pickle_with_their_epoch_api(tmp_path):
    import pickle

    cs = CharacterDict()
    synth = build_source({"name": "SynthTextLine", "num_samples": 6}, "train", cs, G, seed=1)
    clone = pickle.loads(pickle.dumps(synth))
    assert clone.num_entries == 6 and np.array_equal(clone.epoch_indices(1), np.arange(6))
    assert clone.load(2)["label"] == synth.load(2)["label"]
    a = _write(tmp_path, [(f"img/a{i}.png", "a#") for i in range(10)], "a.txt")
    src = SimpleDataSet(str(tmp_path), [a], cs, 25, seed=5, ratio_list=0.4)
    back = pickle.loads(pickle.dumps(src))
    assert len(back) == 4 and np.array_equal(back.epoch_indices(7), src.epoch_indices(7))
    assert back.chars_removed == 10 and back.removed_chars == {"#": 10}
