"""One of two processes for tests/test_checkpoint.py: rounds of every_process, then two
Checkpointer saves with process 1 arriving LAG seconds late. Args: PID PORT DIR LAG."""
import sys
import time

import jax

pid, port, directory, lag = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid, initialization_timeout=120)

import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from jaxocr.distributed import every_process  # noqa: E402
from jaxocr.training.checkpoint import Checkpointer  # noqa: E402

mesh = Mesh(np.array(jax.devices()), ("data",))
w = np.arange(8.0, dtype=np.float32)
state = {"w": jax.make_array_from_callback(w.shape, NamedSharding(mesh, PartitionSpec()),
                                           lambda index: w[index])}
print("gathered", [every_process(10 * r + pid).tolist() for r in range(3)], flush=True)
checkpointer = Checkpointer(directory)
if pid == 1:
    time.sleep(lag)
for step in (1, 2):
    checkpointer.save(state, {"global_step": step}, block=True)
checkpointer.close()
print("saved", flush=True)
