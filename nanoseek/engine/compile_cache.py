"""Where compiled decode steps are kept between runs, so that the second start of a model is quick.

torch.compile keeps what it built in its own on-disk caches (inductor's FX-graph cache, the AOT-autograd cache,
the generated C++/Triton kernels), keyed by the graph, the torch version and the compile settings: a changed
model, dtype or torch version misses and is compiled again, never reused wrongly. nanoseek points those caches
at one folder of its own, `compile_dir()`:

    $NANOSEEK_CACHE_DIR/compile, else $XDG_CACHE_HOME/nanoseek/compile, else ~/.cache/nanoseek/compile

unless TORCHINDUCTOR_CACHE_DIR is set, which wins (as for any torch program). Beside them it writes one marker
per warmed-up engine shape (`warm_key`: the model config, dtype, device, torch version, draft tokens; the
batch sizes it compiled inside) once a warm-up has finished, so that a command can tell before it starts
whether compiling will be quick (`is_warm`). A marker is a hint, never trusted for correctness: with the
kernels gone, compiling is merely slow again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from nanoseek.io import atomic_write_text


def cache_root() -> Path:
    """nanoseek's cache folder (the usual conventions: $NANOSEEK_CACHE_DIR, $XDG_CACHE_HOME, ~/.cache)."""
    if os.environ.get("NANOSEEK_CACHE_DIR"):
        return Path(os.environ["NANOSEEK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nanoseek"


def _users_folder() -> Path | None:
    """TORCHINDUCTOR_CACHE_DIR when the user set it (not torch's default, which torch writes back into the
    variable once it has compiled, and not nanoseek's own)."""
    own = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not own:
        return None
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    ours = {os.path.abspath(default_cache_dir()), os.path.abspath(cache_root() / "compile")}
    return None if os.path.abspath(own) in ours else Path(own)


def compile_dir() -> Path:
    """Where torch.compile's caches live for this process: TORCHINDUCTOR_CACHE_DIR if the user set it, else
    nanoseek's own (set here, before the first compile reads it)."""
    users = _users_folder()
    if users is not None:
        return users
    path = cache_root() / "compile"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def clear() -> Path | None:
    """Delete nanoseek's compile folder and torch's in-memory view of it, so that the next compile starts from
    nothing; returns the folder, or None (nothing deleted) when the folder is one the user chose."""
    if _users_folder() is not None:
        return None
    path = compile_dir()
    shutil.rmtree(path, ignore_errors=True)
    from torch._inductor.utils import clear_caches  # inductor's in-memory caches of what it loaded

    clear_caches()
    torch._dynamo.reset()
    return path


def warm_key(config, dtype: torch.dtype, device: torch.device | str, speculative: int) -> str:
    """What a warm-up compiled: the same key means the same graphs, so the kernels are in the cache."""
    what = {"config": config.to_hf_dict(), "dtype": str(dtype), "device": torch.device(device).type,
            "torch": torch.__version__, "speculative": speculative}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def _marker(key: str) -> Path:
    return compile_dir() / "nanoseek-warm" / f"{key}.json"


def is_warm(key: str, sizes: tuple[int, ...]) -> bool:
    """Whether a warm-up of this key compiled these batch sizes (a missing or unreadable marker: no)."""
    try:
        done = json.loads(_marker(key).read_text())["sizes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(done, list) and set(sizes) <= set(done)


def mark_warm(key: str, sizes: tuple[int, ...], seconds: float) -> bool:
    """Write the marker; False (and nothing else happens) when the folder cannot be written: the marker only
    saves the next start a guess, it is no reason to fail this one."""
    try:
        atomic_write_text(_marker(key), json.dumps({"sizes": sorted(sizes), "warmup_seconds": round(seconds, 1)})
                          + "\n")
    except OSError:
        return False
    return True
