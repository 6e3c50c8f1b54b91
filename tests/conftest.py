import os

import jax

# Four simulated CPU devices for the data-parallel tests; must be set before any backend use.
jax.config.update("jax_num_cpu_devices", 4)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
