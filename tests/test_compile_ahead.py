"""The train step compiled ahead: every batch shape of a phase submitted at once, on threads;
the step waits only for its own program; a shape nobody announced still compiles."""
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxocr.distributed import data_mesh
from jaxocr.training.compile_ahead import CompiledSteps, shape_key
from jaxocr.training.step import batch_sharding, replicated


def _specs(sharding, sizes):
    return [{"image": jax.ShapeDtypeStruct((2, s, s, 3), jnp.float32, sharding=sharding)}
            for s in sizes]


def test_every_shape_of_a_phase_is_compiled_ahead_and_used():
    mesh = data_mesh(jax.devices()[:1])
    sharding = batch_sharding(mesh)
    made, traced = [], []

    def make_step(phase):
        made.append(phase)

        def step(state, batch):
            traced.append((phase, batch["image"].shape))
            return state + 1, {"loss": jnp.sum(batch["image"]) * (1 + phase)}
        return jax.jit(step)

    state = jax.device_put(jnp.zeros(()), replicated(mesh))
    steps = CompiledSteps(make_step, state, _specs(sharding, (8, 16, 24)), threads=2)
    steps.prepare(0)
    steps.prepare(0)  # once per phase
    assert made == [0]
    deadline = time.time() + 60
    while len(traced) < 3 and time.time() < deadline:
        time.sleep(0.05)
    assert sorted(traced) == [(0, (2, s, s, 3)) for s in (8, 16, 24)]  # before any batch came
    for size in (16, 8, 16):
        batch = {"image": jax.device_put(np.ones((2, size, size, 3), np.float32), sharding)}
        state, out = steps(0, state, batch)
        assert float(out["loss"]) == 2 * size * size * 3
    assert len(traced) == 3  # no program was traced again
    # the next phase: its own programs; a shape outside the specs compiles when it comes
    batch = {"image": jax.device_put(np.ones((2, 4, 4, 3), np.float32), sharding)}
    state, out = steps(1, state, batch)
    assert float(out["loss"]) == 2 * 2 * 16 * 3 and int(state) == 4
    assert made == [0, 1] and (1, (2, 4, 4, 3)) in traced
    steps.close()


def test_shape_key_tells_shapes_and_dtypes_apart():
    a = {"image": np.zeros((2, 8, 8, 3), np.float32), "mask": np.zeros(2, np.float32)}
    assert shape_key(a) == shape_key(dict(reversed(list(a.items()))))
    assert shape_key(a) != shape_key({**a, "image": np.zeros((2, 8, 16, 3), np.float32)})
    assert shape_key(a) != shape_key({**a, "mask": np.zeros(2, np.int32)})
