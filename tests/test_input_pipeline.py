"""The input pipeline that feeds many devices: uint8 images normalised on the device, worker
choice, cheap layout-independent randomness, one long-lived pipeline, bad data never fatal."""
import logging
import os
import sys
import threading

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from jaxocr.data import pipeline
from jaxocr.data.charset import CharacterDict
from jaxocr.data.device_norm import normalize_rec_images
from jaxocr.data.fixtures import write_label_file_dataset
from jaxocr.data.pipeline import DEVICE_KEYS, MAX_SUBSTITUTES, Loader, resolve_worker_type
from jaxocr.data.synth import SynthTextLine
from jaxocr.data.transforms import (KeepKeys, RecResizeImg, SVTRRecResizeImg, build_transforms,
                                    resize_norm_img)
from jaxocr.distributed import data_mesh


def batch_sharding(mesh):
    from jax.sharding import NamedSharding, PartitionSpec
    from jaxocr.distributed import AXIS
    return NamedSharding(mesh, PartitionSpec(AXIS))

ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"
AUG = [{"DecodeImage": {"img_mode": "BGR", "channel_first": False}}, {"RecAug": None},
       {"CTCLabelEncode": None}, {"RecResizeImg": {"image_shape": [3, 32, 100]}},
       {"KeepKeys": {"keep_keys": ["image", "label", "length"]}}]


def _cfg(tmp_path, *overrides, dataset=None, transforms=None):
    cfg = tiny_config(tmp_path, *overrides)
    for mode in ("Train", "Eval"):
        if dataset is not None:
            cfg[mode]["dataset"] = {**dataset, "transforms": cfg[mode]["dataset"]["transforms"]}
        if transforms is not None:
            cfg[mode]["dataset"]["transforms"] = transforms
    return cfg


def _loader(cfg, mode="Train", devices=4):
    return Loader(cfg, mode, CharacterDict.from_config(cfg["Global"]),
                  data_mesh(jax.devices()[:devices]))


def _same(a, b, keys=("image", "valid_width", "label", "length", "mask", "bad")):
    for k in keys:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------ 1. uint8, normalised on device
@pytest.mark.parametrize("shape", [[3, 32, 100], [1, 32, 100], [3, 64, 256]])
def test_device_normalisation_equals_paddle_resize_norm_img(shape):
    synth = SynthTextLine(ALNUM, 12, seed=3, min_len=1, max_len=12, mixed_case=False)
    images = [synth.render(i)[0] for i in range(12)]
    images.append(np.full((10, 400, 3), 77, np.uint8))  # wider than W/H: no padding
    images.append(np.full((40, 12, 3), 200, np.uint8))  # narrow: mostly padding
    op = RecResizeImg(shape)
    rows = [op({"image": img}) for img in images]
    c, h, w = shape
    for r in rows:
        assert r["image"].dtype == np.uint8 and r["image"].shape == (h, w, c)
        assert r["valid_width"].dtype == np.int32 and 1 <= r["valid_width"] <= w
        assert np.all(r["image"][:, r["valid_width"]:] == 0)
    assert any(r["valid_width"] < w for r in rows) and any(r["valid_width"] == w for r in rows)
    u8 = np.stack([r["image"] for r in rows])
    vw = np.array([r["valid_width"] for r in rows])
    got = np.asarray(jax.jit(normalize_rec_images)(u8, vw))
    ref = np.stack([resize_norm_img(img, shape)[0] for img in images])  # the old host floats
    assert got.shape == ref.shape == (len(images), h, w, c) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    for row, width in zip(got, vw):
        assert np.all(row[:, width:] == 0.0)  # exactly zero in the padding
    bf = normalize_rec_images(u8, vw, dtype=jnp.bfloat16)
    assert bf.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf, np.float32), ref, atol=1e-2)
    # SVTR's op (padding false) fills the width: everything valid
    svtr = SVTRRecResizeImg(shape, padding=False)({"image": images[0]})
    assert svtr["valid_width"] == w
    np.testing.assert_allclose(np.asarray(normalize_rec_images(svtr["image"][None],
                                                               svtr["valid_width"][None]))[0],
                               resize_norm_img(images[0], shape, padding=False)[0], atol=1e-6)


def test_keep_keys_carries_internal_keys_and_device_keys():
    kk = KeepKeys(["image", "label", "length"])
    data = {"image": 1, "label": 2, "length": 3, "valid_width": 4, "mask": 5, "bad": 6,
            "img_path": "x", "valid_ratio": 0.5}
    assert kk(data) == {"image": 1, "label": 2, "length": 3, "valid_width": 4, "mask": 5,
                        "bad": 6}
    assert kk({"image": 1, "label": 2, "length": 3}) == {"image": 1, "label": 2, "length": 3}
    assert DEVICE_KEYS == {"Train": ("image", "valid_width", "label", "length", "mask"),
                           "Eval": ("image", "valid_width")}
    infer = build_transforms([op for op in AUG if "RecAug" not in op], CharacterDict(),
                             {"max_text_length": 25}, infer=True)
    ok, png = cv2.imencode(".png", np.full((32, 64, 3), 90, np.uint8))
    out = infer({"image_bytes": png.tobytes()})
    assert sorted(out) == ["image", "valid_width"] and out["valid_width"] == 64


def test_eval_and_infer_mode_are_honoured_with_one_log_line(caplog):
    from jaxocr.data import transforms
    transforms._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="jaxocr"):
        for _ in range(3):
            op = RecResizeImg([3, 32, 100], eval_mode=True)
        RecResizeImg([3, 32, 100], eval_mode=False, infer_mode=False)
    lines = [r.getMessage() for r in caplog.records if "eval_mode" in r.getMessage()]
    assert len(lines) == 1 and "fixed-width" in lines[0]
    wide = op({"image": np.full((10, 400, 3), 128, np.uint8)})
    assert wide["image"].shape == (32, 100, 3) and wide["valid_width"] == 100


# ------------------------------------------------------------------ 2. worker type
def test_worker_type_auto_uses_processes_only_with_four_cores(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert resolve_worker_type("auto") == resolve_worker_type(None) == "process"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert resolve_worker_type("auto") == "thread"
    assert resolve_worker_type("process") == "process" and resolve_worker_type("thread") == "thread"
    with pytest.raises(ValueError, match="worker_type"):
        resolve_worker_type("fork")
    cfg = _cfg(tmp_path)
    cfg["Train"]["loader"].pop("worker_type", None)  # missing: auto
    assert _loader(cfg).worker_type == "thread"


# ------------------------------------------------------------------ 3. cheap randomness
def test_generator_only_for_random_transforms(monkeypatch, tmp_path):
    calls = []
    real = pipeline.sample_rng
    monkeypatch.setattr(pipeline, "sample_rng", lambda *a: calls.append(a) or real(*a))
    plain = _loader(_cfg(tmp_path))
    plain.maker.batch(plain.local_indices(0)[:8], 0)
    assert calls == []  # no augmentation: no generator at all
    aug = _loader(_cfg(tmp_path, transforms=AUG))
    aug.maker.batch(aug.local_indices(0)[:8], 0)
    assert len(calls) == 8 and {c[:2] for c in calls} == {(aug.seed, 0)}
    a, b = real(1, 2, 3).random(4), real(1, 2, 3).random(4)
    assert np.array_equal(a, b)
    for other in (real(1, 2, 4), real(1, 3, 3), real(2, 2, 3), real(1, 2, 3, 1)):
        assert not np.array_equal(a, other.random(4))


def test_augmentation_does_not_depend_on_the_worker_layout(tmp_path):
    """Same sample -> same augmentation with 1 thread, 2 threads, 2 processes, or as process 1
    of 2 with another device count."""
    cfg = _cfg(tmp_path, transforms=AUG)
    ref = np.concatenate([b["image"] for b in _loader(cfg).host_batches(1)])
    idx = _loader(cfg).local_indices(1)
    for overrides in (["Train.loader.num_workers=2", "Train.loader.worker_type=thread"],
                      ["Train.loader.num_workers=2", "Train.loader.worker_type=process"]):
        got = np.concatenate([b["image"] for b in _loader(_cfg(tmp_path, *overrides,
                                                               transforms=AUG)).host_batches(1)])
        np.testing.assert_array_equal(got, ref)
    half = _loader(cfg, devices=2)
    half.process_index, half.process_count, half.local_batch = 1, 2, 2
    mine = half.local_indices(1)
    got = np.concatenate([b["image"] for b in half.host_batches(1)])
    for row, i in zip(got, mine):
        np.testing.assert_array_equal(row, ref[list(idx).index(i)])
    assert not all(np.array_equal(ref[0], r) for r in ref[1:4])


# ------------------------------------------------------------------ 4. one long-lived pipeline
def test_stream_spans_the_remaining_epochs_without_rebuilding(monkeypatch, tmp_path):
    cfg = _cfg(tmp_path, "Global.epoch_num=3")
    loader = _loader(cfg)
    built = []
    real = loader._iterate
    monkeypatch.setattr(loader, "_iterate", lambda plan: built.append(plan) or real(plan))
    sharding = batch_sharding(data_mesh(jax.devices()[:4]))
    got = list(loader.stream(1, 40, sharding))
    assert len(built) == 1  # one pipeline for epochs 1 and 2
    assert [h["epoch"] for _, h in got] == [1] * 3 + [2] * 8
    assert [h["next_sample"] for _, h in got] == [48, 56, 64] + [8 * k for k in range(1, 9)]
    assert [h["epoch_end"] for _, h in got] == [False, False, True] + [False] * 7 + [True]
    ref = [*pipeline.BatchPlan(loader.order(), [(1, 40)]),
           *pipeline.BatchPlan(loader.order(), [(2, 0)])]
    fresh = _loader(cfg)
    per_epoch = list(fresh.host_batches(1, 40)) + list(fresh.host_batches(2))
    for (device, host), item, one in zip(got, ref, per_epoch):
        _same(host, one)
        assert sorted(device) == sorted(DEVICE_KEYS["Train"])
        assert device["image"].dtype == jnp.uint8 and device["image"].shape == (8, 32, 100, 3)
        np.testing.assert_array_equal(np.asarray(device["image"]), host["image"])
        assert len(item["indices"]) == 8
    assert list(_loader(cfg).stream(3, 0, sharding)) == []
    loader.close()


def test_stream_maps_onto_the_sources_epoch_indices(monkeypatch, tmp_path):
    cfg = _cfg(tmp_path, "Train.loader.shuffle=false")
    src = type(_loader(cfg).source)
    monkeypatch.setattr(src, "epoch_indices",
                        lambda self, epoch: (np.arange(32) * 2 + epoch) % 64, raising=False)
    loader = _loader(cfg)
    assert loader.num_samples == 32 and loader.steps_per_epoch == 4
    assert list(loader.local_indices(1)) == [(2 * k + 1) % 64 for k in range(32)]
    labels = [h["label"] for h in loader.host_batches(1)]
    assert len(labels) == 4


def test_close_ends_prefetch_thread_and_workers(tmp_path):
    cfg = _cfg(tmp_path, "Global.epoch_num=50", "Train.loader.num_workers=2",
               "Train.loader.worker_type=process")
    loader = _loader(cfg)
    sharding = batch_sharding(data_mesh(jax.devices()[:4]))
    stream = loader.stream(0, 0, sharding, prefetch=2)
    first = next(stream)[1]
    assert first["epoch"] == 0
    loader.close()
    assert not stream.alive()
    assert not [t for t in threading.enumerate() if t.name == "DevicePrefetcher" and t.is_alive()]
    assert loader._iters == []


def test_eval_pipeline_is_kept_between_evaluations(tmp_path):
    cfg = _cfg(tmp_path)
    loader = _loader(cfg, "Eval")  # 10 samples, global batch 8 -> 2 steps
    sharding = batch_sharding(data_mesh(jax.devices()[:4]))
    first = [h for _, h in loader.batches(0, 0, sharding)]
    it = loader._eval[0]
    second = [h for _, h in loader.batches(0, 0, sharding)]
    assert loader._eval[0] is it  # the same grain iterator (and workers) for both
    assert len(first) == len(second) == 2
    for a, b in zip(first, second):
        _same(a, b)
    assert np.concatenate([h["mask"] for h in first]).tolist() == [1.0] * 10 + [0.0] * 6
    partial = loader.batches(0, 0, sharding)
    next(partial)  # an evaluation stopped early: the next starts afresh, still whole
    third = [h for _, h in loader.batches(0, 0, sharding)]
    assert len(third) == 2
    for a, b in zip(first, third):
        _same(a, b)
    loader.close()
    assert not partial.alive()


# ------------------------------------------------------------------ 5. bad data never stops a run
def _corrupt_dataset(tmp_path, n=64, corrupt=52):
    label_file = write_label_file_dataset(tmp_path / "data", n, ALNUM, seed=4, corrupt=corrupt)
    return {"name": "SimpleDataSet", "data_dir": str(tmp_path / "data"),
            "label_file_list": [label_file]}


def test_mostly_corrupt_label_file_trains_and_evaluates(tmp_path):
    dataset = _corrupt_dataset(tmp_path)
    cfg = _cfg(tmp_path, dataset=dataset)
    train = _loader(cfg)
    batches = list(train.host_batches(0))
    assert len(batches) == 8
    rows = {k: np.concatenate([b[k] for b in batches]) for k in ("mask", "bad", "image", "label",
                                                                  "length")}
    assert rows["bad"].sum() > 40  # substitutes were needed and counted
    assert rows["mask"].sum() >= 56  # nearly every row is a real (substituted) sample
    for m, bad, img, lab, n in zip(*(rows[k] for k in ("mask", "bad", "image", "label",
                                                        "length"))):
        if m == 0:  # gave up after MAX_SUBSTITUTES: a masked, all-zero row
            assert bad == MAX_SUBSTITUTES and not img.any() and not lab.any() and n == 0
        else:
            assert n > 0 and img.any()
    again = list(_loader(_cfg(tmp_path, "Train.loader.num_workers=2", dataset=dataset))
                 .host_batches(0))  # seeded substitutes: the same under another layout
    for a, b in zip(batches, again):
        _same(a, b)

    evals = _loader(cfg, "Eval")  # 64 samples, 52 unreadable: masked, counted, not replaced
    ev = list(evals.host_batches(0))
    mask = np.concatenate([b["mask"] for b in ev])
    bad = np.concatenate([b["bad"] for b in ev])
    assert mask.sum() == 12 and bad.sum() == 52 and np.all(mask[bad > 0] == 0)


def test_all_corrupt_data_gives_masked_rows_not_an_error(tmp_path):
    cfg = _cfg(tmp_path, dataset=_corrupt_dataset(tmp_path, n=16, corrupt=16))
    loader = _loader(cfg)
    for b in loader.host_batches(0):
        assert b["image"].shape == (8, 32, 100, 3) and b["image"].dtype == np.uint8
        assert not b["mask"].any() and np.all(b["bad"] == MAX_SUBSTITUTES)
        assert not b["image"].any() and not b["label"].any() and not b["valid_width"].any()


# ------------------------------------------------------------------ 6. bench
def test_bench_data_png_case(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "launch"))
    import bench
    cfg = _cfg(tmp_path, "Train.loader.batch_size_per_card=8")
    out = bench.data_speed(cfg, [1, 2], batches=2, png=48, png_dir=str(tmp_path / "png"),
                           no_augment=True)
    assert out["dataset"] == "SimpleDataSet" and "RecAug" not in out["transforms"]
    for n in (1, 2):
        assert out[f"workers_{n}"] > 0 and out[f"per_core_{n}"] > 0 and out[f"scaling_{n}"] > 0
    assert out["scaling_1"] == 1.0 and out["usable_cores"] >= 1 and out["cpu_model"]
