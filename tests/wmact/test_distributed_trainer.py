"""The real Trainer across two JAX processes on localhost (CPU, gloo collectives).

Two processes with one CPU device each (a global 2-device data-parallel mesh) run one
`trainer.iteration` and an `evaluate`; each process's own replica of the new parameters must be
bit-identical to the other's, and both must match this (test) process running the same config on one
device: parameter checksums (rtol 1e-4), generated token counts, success and evaluation metrics exactly
(test_train.py's eight-device test checks the same against one device). The reference runs here, while
the workers compile: a third process would compile the same program a third time.
"""
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from .test_distributed import GLOO_UNAVAILABLE, _free_port, wait_all
from .subprocess_env import subprocess_env
from .test_train import TINY, first_iteration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 900.0  # seconds for all workers together (compiling dominates; ~1-2 min on a quiet machine)

WORKER = TINY + textwrap.dedent("""
    import hashlib, json, os, sys
    sys.path.insert(0, {repo!r})
    from wmact_jax import distributed
    out = sys.argv[1]
    c = tiny_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tp = -1, 1, 1  # 2 devices -> data-parallel over 2
    if not distributed.use_gloo_for_cpu():
        sys.exit({gloo})
    c.distributed.enabled = True
    c.distributed.coordinator = "127.0.0.1:" + sys.argv[2]
    c.distributed.num_processes = 2
    c.distributed.process_id = int(sys.argv[3])
    assert distributed.maybe_initialize(c)

    import jax, numpy as np
    from jax.experimental import multihost_utils
    from wmact_jax.train import Trainer

    def local(x):  # this process's own copy of a replicated array; a sharded one is gathered
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        if not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    assert (jax.process_count(), jax.local_device_count()) == (2, 1), jax.devices()
    tr = Trainer(c, "")
    assert tr.mesh is not None and tr.mesh.shape["data"] == 2
    st = tr.init_state(jax.random.PRNGKey(0))
    st, m = tr.iteration(st)
    leaves = [local(x) for x in jax.tree.leaves(st.ppo.params)]
    sha = hashlib.sha256(b"".join(x.tobytes() for x in leaves)).hexdigest()
    metrics = {{k: float(local(v)) for k, v in m.items()}}
    ev, _ = tr.evaluate(st)
    res = dict(processes=jax.process_count(), devices=jax.device_count(), sha=sha,
               sums=[float(x.astype(np.float64).sum()) for x in leaves], metrics=metrics, eval=ev,
               iteration=int(local(st.iteration)))
    with open(os.path.join(out, "multi_" + str(jax.process_index()) + ".json"), "w") as f:
        json.dump(res, f)
    jax.distributed.shutdown()
""")


def test_trainer_two_processes_agree_with_one_process(tmp_path):
    t0 = time.time()
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=REPO, gloo=GLOO_UNAVAILABLE))
    port = str(_free_port())
    env = subprocess_env(shared_cache=False, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)  # one CPU device each
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)  # address, count and id come from the config
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), port, str(i)], env=env,
                              cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        one = first_iteration(evaluate=True)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    outs = wait_all(procs, t0, TIMEOUT, "trainer workers")
    codes = [p.returncode for p in procs]
    if GLOO_UNAVAILABLE in codes:
        pytest.skip("gloo CPU collectives are not available in this jax build")
    assert codes == [0, 0], "\n\n".join(err[-3000:] for _, err in outs)

    r0, r1 = (json.loads((tmp_path / f).read_text()) for f in ("multi_0.json", "multi_1.json"))
    assert (r0["processes"], r0["devices"]) == (2, 2) and one["devices"] == 1
    assert r0["iteration"] == r1["iteration"] == 1
    # Both processes hold bit-identical replicas of the new parameters and saw the same metrics.
    assert r0["sha"] == r1["sha"]
    assert r0["metrics"] == r1["metrics"] and r0["eval"] == r1["eval"]
    # ... which are the one-device step's.
    assert r0["metrics"]["generated_tokens"] == one["gen"] > 0
    assert r0["metrics"]["success_rate"] == one["success"]
    np.testing.assert_allclose(r0["sums"], one["sums"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r0["metrics"]["ppo/loss"], one["loss"], rtol=1e-3, atol=1e-5)
    assert r0["eval"]["success_rate"] == one["eval"]["success_rate"]
    assert r0["eval"]["mean_turns"] == one["eval"]["mean_turns"]
