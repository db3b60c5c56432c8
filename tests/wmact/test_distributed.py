"""Two JAX processes on localhost (CPU, gloo collectives) run one data-parallel training step on a
global mesh and must agree on the new parameters; plus the config/environment resolution."""
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from configs import base
from wmact_jax import distributed

from .subprocess_env import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GLOO_UNAVAILABLE = 77

WORKER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    from configs import base
    from wmact_jax import distributed
    if not distributed.use_gloo_for_cpu():
        sys.exit({gloo})
    config = base.get_config()
    config.distributed.enabled = True  # address, count and id come from the environment
    assert distributed.maybe_initialize(config)

    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
    pid = jax.process_index()
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    rng = np.random.default_rng(0)  # same global batch and init on both processes
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.normal(size=(8, 2)).astype(np.float32)
    w0 = rng.normal(size=(4, 2)).astype(np.float32)
    half = slice(4 * pid, 4 * pid + 4)  # this process feeds its half of the batch
    xs = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), x[half])
    ys = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), y[half])
    w = jax.make_array_from_process_local_data(NamedSharding(mesh, P()), w0)
    assert xs.shape == (8, 4) and w.shape == (4, 2)

    @jax.jit
    def step(w, x, y):
        loss, g = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
        return w - 0.1 * g, loss

    w1, loss = step(w, xs, ys)
    w1 = np.asarray(w1.addressable_data(0))
    np.save(os.path.join({out!r}, f"w_{{pid}}.npy"), w1)
    with open(os.path.join({out!r}, f"loss_{{pid}}.txt"), "w") as f:
        f.write(repr(float(np.asarray(loss.addressable_data(0)))))
    jax.distributed.shutdown()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs, t0: float, timeout: float, what: str):
    """(stdout, stderr) of every worker, all within `timeout` seconds from t0; kills them all and
    fails the test if any is still running then."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(5.0, timeout - (time.time() - t0))))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        pytest.fail(f"{what} timed out")
    return outs


def test_two_processes_agree(tmp_path):
    t0 = time.time()
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=REPO, out=str(tmp_path), gloo=GLOO_UNAVAILABLE))
    port = _free_port()
    procs = []
    for pid in range(2):
        env = subprocess_env(shared_cache=False, JAX_PLATFORMS="cpu",  # one CPU device per process
                             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, cwd=str(tmp_path),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = wait_all(procs, t0, 55.0, "distributed workers")
    codes = [p.returncode for p in procs]
    if GLOO_UNAVAILABLE in codes:
        pytest.skip("gloo CPU collectives are not available in this jax build")
    assert codes == [0, 0], "\n".join(err[-3000:] for _, err in outs)

    w = [np.load(tmp_path / f"w_{i}.npy") for i in range(2)]
    assert w[0].tobytes() == w[1].tobytes()  # bit-identical parameters on both processes
    losses = [float((tmp_path / f"loss_{i}.txt").read_text()) for i in range(2)]
    assert losses[0] == losses[1]

    # Same step on the whole batch in one process (numpy): the data-parallel step is that step.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.normal(size=(8, 2)).astype(np.float32)
    w0 = rng.normal(size=(4, 2)).astype(np.float32)
    grad = 2.0 * x.T @ (x @ w0 - y) / y.size
    np.testing.assert_allclose(w[0], w0 - 0.1 * grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses[0], np.mean((x @ w0 - y) ** 2), rtol=1e-5)


def test_initialize_args_config_then_environment():
    c = base.get_config()
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
    assert distributed.initialize_args(c, env) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    c.distributed.coordinator = "host:99"
    c.distributed.num_processes = 2
    c.distributed.process_id = 0
    assert distributed.initialize_args(c, env) == {
        "coordinator_address": "host:99", "num_processes": 2, "process_id": 0}
    assert distributed.initialize_args(base.get_config(), {}) == {}  # TPU pods: auto-detect


def test_disabled_is_a_no_op():
    assert distributed.maybe_initialize(base.get_config()) is False
