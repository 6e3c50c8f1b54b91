"""The train step's on-device RecMetric sums equal RecMetric on the decoded strings."""
import jax
import numpy as np
import pytest

from jaxocr.data.charset import CharacterDict
from jaxocr.metrics.rec_device import canonical_ids, rec_metric_sums
from jaxocr.metrics.rec_metric import RecMetric
from jaxocr.postprocess import ctc_greedy_decode, decode_labels


@pytest.mark.parametrize("options", [{}, {"ignore_space": False}, {"is_filter": True}])
def test_device_sums_equal_rec_metric(tmp_path, options):
    dict_file = tmp_path / "dict.txt"
    dict_file.write_text("\n".join(list("abcAB1-") + ["é"]) + "\n")
    charset = CharacterDict(dict_file, use_space_char=True)  # ids 1..8 and 9 = " "
    rng = np.random.default_rng(0)
    b, t, length = 257, 12, 8
    # few classes and many repeats/blanks, so predictions often equal the label
    labels = rng.integers(1, charset.num_classes, (b, length)).astype(np.int32)
    lengths = rng.integers(0, length + 1, b).astype(np.int32)
    labels[np.arange(length)[None] >= lengths[:, None]] = 0
    pred = np.zeros((b, t), np.int32)
    for r in range(b):
        if r % 3 == 0:  # the label itself, with CTC repeats and blanks
            seq = []
            for c in labels[r, :lengths[r]]:
                seq += [int(c)] * rng.integers(1, 2) + [0]
            pred[r, :min(t, len(seq))] = seq[:t]
        else:
            pred[r] = rng.integers(0, charset.num_classes, t) * (rng.random(t) < 0.6)
    mask = (rng.random(b) < 0.9).astype(np.float32)

    ref = RecMetric(**options)
    preds = [p for p, _ in ctc_greedy_decode(pred, np.ones(pred.shape), charset)]
    ref.update(preds, decode_labels(labels, lengths, charset), mask)
    table = canonical_ids(charset, RecMetric(**options))
    sums = jax.jit(rec_metric_sums)(pred, labels, lengths, mask, table)
    np.testing.assert_allclose(np.asarray(sums), ref.sums, rtol=1e-5)
    assert 0 < ref.sums[0] < ref.sums[2]  # some right, some wrong: the test can tell


def test_edit_distance_by_hand():
    from jaxocr.metrics.rec_device import edit_distance
    a = np.array([[1, 2, 3, 0], [1, 1, 0, 0], [0, 0, 0, 0]], np.int32)
    b = np.array([[1, 3, 0], [2, 1, 1], [4, 4, 0]], np.int32)
    d = edit_distance(a, np.array([3, 2, 0]), b, np.array([2, 3, 2]))
    assert np.asarray(d).tolist() == [1, 1, 2]  # delete 2; insert 2; insert twice
