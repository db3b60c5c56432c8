"""The environment of a test's subprocess: the session's compile settings (tests/conftest.py), its own
number of CPU devices, and for processes of one multi-process job no shared compilation cache."""
import os

_DEVICES = "--xla_force_host_platform_device_count"


def compile_cache_env(folder: str) -> dict[str, str]:
    """The settings that open the session's persistent compilation cache at `folder` (tests/conftest.py):
    programs that took at least 0.5 s to compile are kept, and the size limit (never reached) is what
    turns on JAX's file lock around each read and write of the cache."""
    return {"JAX_COMPILATION_CACHE_DIR": folder, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
            "JAX_COMPILATION_CACHE_MAX_SIZE": str(8 << 30)}


def subprocess_env(devices: int | None = None, shared_cache: bool = True, **extra) -> dict:
    """os.environ for a subprocess with `devices` simulated CPU devices (None: one, whatever the caller's
    XLA_FLAGS said). shared_cache=False leaves the session's compilation cache out: the processes of one
    jax.distributed job compile the same program side by side, and are kept off a cache their compiles
    would share across process ids."""
    env = dict(os.environ, **extra)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICES)]
    if devices is not None:
        flags.append(f"{_DEVICES}={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    if not shared_cache:
        for k in compile_cache_env(""):
            env.pop(k, None)
    return env
