"""minibridge.memory: large freed blocks are reused (no page faults per step), and the switches work."""

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
from minibridge.memory import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
import os, torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
start = faults()
for _ in range(10):  # a training step's large temporary, allocated, written and freed again
    x = torch.empty(8 * 2**20)  # 32 MB
    x.fill_(1.0)
    del x
print(json.dumps({"tuned": tuned, "faults": faults() - start, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}))
"""


def _probe(mode, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "MINIBRIDGE_MALLOC")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**environ, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and transparent huge pages are Linux's")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    plain, tuned = _probe("plain"), _probe("tuned")
    assert tuned["tuned"] and tuned["thp"] == "1" and plain["thp"] is None
    # as glibc does it: every 32 MB tensor is a fresh mmap, 8192 faults of 4 KB each, ten times over
    assert plain["faults"] > 40_000
    assert tuned["faults"] < plain["faults"] / 4


def test_switched_off_by_the_environment_and_by_a_preloaded_allocator():
    off = _probe("tuned", MINIBRIDGE_MALLOC="system")
    assert not off["tuned"] and off["thp"] is None
    # a preloaded allocator is left alone (ld.so ignores a library it cannot find, the name is what counts)
    assert not _probe("tuned", LD_PRELOAD="libjemalloc.so.2")["tuned"]
    kept = _probe("tuned", THP_MEM_ALLOC_ENABLE="0")
    assert kept["thp"] == "0"  # an explicit choice is kept
