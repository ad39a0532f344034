"""Run a function on N local gloo ranks (processes from a fork server) and surface any rank's traceback."""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ranks are forked from a fork server that has imported torch once (2-3 s of CPU a process otherwise: the
# suite starts hundreds of ranks on 2 cores). Only torch is preloaded, and the parent's environment is
# handed to each rank as spawn would, so a test's environment variables reach minibridge's imports.
_CONTEXT = mp.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["torch", "torch.distributed.tensor"])


def _entry(rank, world_size, port, fn, args, error_dir, environ):
    os.environ.clear()
    os.environ.update(environ)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        fn(*args)
    except BaseException:
        Path(error_dir, f"rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args, timeout: float = 600):
    """fn(*args) on `world_size` ranks; raises with the first failing rank's traceback."""
    with tempfile.TemporaryDirectory() as error_dir:
        port = _free_port()
        procs = [_CONTEXT.Process(target=_entry, args=(r, world_size, port, fn, args, error_dir, dict(os.environ)))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        for p in procs:
            if p.is_alive():
                p.kill()
        errors = sorted(Path(error_dir).glob("rank*.txt"))
        if errors:
            raise AssertionError(f"{errors[0].stem} failed:\n{errors[0].read_text()}")
        codes = [p.exitcode for p in procs]
        if any(c != 0 for c in codes):
            raise AssertionError(f"ranks exited with codes {codes} (timeout {timeout}s?)")


def check_each(check, cases: list[dict]) -> None:
    """Run `check(**case)` for every case inside one spawned world, naming the case that fails."""
    for case in cases:
        try:
            check(**case)
        except Exception as err:
            raise AssertionError(f"layout {case}: {err}") from err


def assert_grads_match(model, reference) -> None:
    """Every gradient of a (sharded) model equals this rank's block of the single-process gradient."""
    from minibridge.models import ModelChunks
    from minibridge.parallel.sharding import take_block

    for name, p in model.named_parameters():
        expected = take_block(reference.get_parameter(name).grad, ModelChunks.of(model).specs.get(name))
        torch.testing.assert_close(p.grad, expected, msg=lambda m: f"grad of {name}: {m}")
