"""The input pipeline: global order independent of process count, exact eval padding, workers."""
import jax
import numpy as np
import pytest

from conftest import tiny_config
from jaxocr.data.charset import CharacterDict
from jaxocr.data.pipeline import Loader
from jaxocr.distributed import data_mesh


def _loader(tmp_path, mode="Train", *overrides):
    cfg = tiny_config(tmp_path, *overrides)
    return Loader(cfg, mode, CharacterDict.from_config(cfg["Global"]), data_mesh(jax.devices()[:4]))


def _as_process(loader, index, count):
    loader.process_index, loader.process_count = index, count
    loader.local_batch = loader.global_batch // count
    return loader


def test_global_order_does_not_depend_on_process_count(tmp_path):
    one = _loader(tmp_path)
    assert (one.global_batch, one.steps_per_epoch) == (8, 8)  # 64 samples, 2 per card x 4
    whole = one.local_indices(epoch=3).reshape(8, 8)
    parts = [_as_process(_loader(tmp_path), p, 2).local_indices(epoch=3).reshape(8, 4)
             for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    assert sorted(whole.ravel()) == list(range(64))  # every sample once per epoch
    assert not np.array_equal(whole, one.local_indices(epoch=4).reshape(8, 8))  # reshuffled
    np.testing.assert_array_equal(one.local_indices(3, start_sample=40), whole[5:].ravel())


def test_a_resumed_position_is_the_same_sample_under_another_global_batch(tmp_path):
    whole = _loader(tmp_path).local_indices(epoch=2)  # global batch 8
    cfg = tiny_config(tmp_path)
    three = Loader(cfg, "Train", CharacterDict.from_config(cfg["Global"]),
                   data_mesh(jax.devices()[:3]))  # global batch 6: 10 steps, 60 of 64 samples
    assert three.steps_from(40) == 3  # 20 samples left: whole steps of 6
    np.testing.assert_array_equal(three.local_indices(2, start_sample=40), whole[40:58])
    assert three.steps_from(62) == 0 and three.local_indices(2, 62).size == 0


def test_eval_pads_to_whole_batches_with_a_mask(tmp_path):
    loader = _loader(tmp_path, "Eval")  # 10 samples, global batch 8 -> 2 steps, 6 padded
    assert loader.steps_per_epoch == 2
    indices = loader.local_indices(0)
    assert list(indices[:10]) == list(range(10)) and list(indices[10:]) == [-1] * 6
    masks = np.concatenate([b["mask"] for b in loader.host_batches(0)])
    assert masks.tolist() == [1.0] * 10 + [0.0] * 6


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_workers_deliver_the_same_batches(tmp_path, worker_type):
    ref = list(_loader(tmp_path, "Train", "Train.loader.num_workers=1").host_batches(1))
    other = _loader(tmp_path, "Train", "Train.loader.num_workers=2",
                    f"Train.loader.worker_type={worker_type}")
    got = list(other.host_batches(1))
    assert len(got) == len(ref) == 8
    for a, b in zip(ref, got):
        assert a["image"].shape == (8, 32, 100, 3) and a["image"].dtype == np.uint8
        for key in ("image", "valid_width", "label", "length", "mask"):
            np.testing.assert_array_equal(a[key], b[key])
