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


RELEASE = """
import json, sys, torch
from minibridge.memory import keep_freed_memory, release_freed_memory
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
if sys.argv[1] == "kept":
    keep_freed_memory()
big = torch.ones(6 * 2**20)  # 24 MB, mmapped; freeing it raises glibc's mmap threshold to 24 MB
del big
blocks = [torch.ones(4 * 2**20) for _ in range(20)]  # 16 MB each: now from the heap
last = blocks.pop()  # still alive at the top, so glibc cannot trim the freed ones below it
del blocks
before = rss()
released = release_freed_memory()
print(json.dumps({"released": released, "returned": before - rss()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_pages_go_back_unless_kept():
    run = lambda mode, **env: json.loads(subprocess.run(  # noqa: E731
        [sys.executable, "-c", RELEASE, mode], env={**os.environ, **env}, capture_output=True, text=True,
        check=True).stdout.strip().splitlines()[-1])
    plain = run("plain")
    assert plain["released"] and plain["returned"] > 200 * 2**20  # ~19 x 16 MB sat in the heap
    kept = run("kept")
    assert not kept["released"] and kept["returned"] < 16 * 2**20
    assert not run("plain", MINIBRIDGE_MALLOC="system")["released"]


def test_the_model_releases_freed_memory_at_the_end_of_its_backward(monkeypatch):
    """The embedding's backward is the model's last: it calls release_freed_memory once per backward."""
    import torch

    import minibridge.models.common as common
    from minibridge.loading.fresh import initialize_fresh
    from minibridge.models import ModelConfig
    from minibridge.parallel.parallelize import build_model

    calls = []
    monkeypatch.setattr(common, "release_freed_memory", lambda: calls.append(1))
    config = ModelConfig(family="llama", vocab_size=32, hidden_size=8, intermediate_size=16, num_layers=2,
                         num_heads=2, num_kv_heads=1, head_dim=4)
    chunks = build_model(config)
    initialize_fresh(chunks, seed=0)
    ids = torch.randint(0, 32, (1, 6))
    chunks[0](ids, labels=ids).backward()
    assert calls == [1]
    chunks[0].embed_tokens.weight.requires_grad_(False)  # a frozen embedding has no backward to run it
    chunks[0](ids, labels=ids).backward()
    assert calls == [1]
