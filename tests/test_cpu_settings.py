"""The process-wide CPU settings sft applies before training (sft.devices): glibc keeps large freed blocks for
reuse (and hands them back after fit), oneDNN's kernel cache is capped unless the environment says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sft.errors import ConfigError

_STEPS = """
import resource, sys, torch
from sft.devices import keep_large_cpu_blocks, return_free_cpu_memory
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "keep":
    assert keep_large_cpu_blocks()
small = torch.ones(1000)
faults = []
for step in range(12):  # a 64 MiB block (above glibc's largest automatic mmap threshold, 32 MiB) every "step"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(64 * 2**20 // 4)
    small = small * 2  # small allocations in between, as in a training step
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    held = rss_mib()
    del block
    released = held - rss_mib()
return_free_cpu_memory()
print(sum(faults[-4:]) / 4, released, held - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_large_blocks_are_reused_step_after_step_only_when_asked_and_go_back_after_fit() -> None:
    def run(mode: str) -> list[float]:
        out = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return [float(x) for x in out.stdout.split()]

    faults, released, _ = run("default")
    # glibc unmaps the block at every free: each step page-faults all of its 16,384 pages in afresh
    assert faults > 16_000 and released > 48
    faults, released, trimmed = run("keep")
    assert faults < 500 and released < 8  # after a few steps the heap holds a free block that fits: no faults
    assert trimmed > 48  # return_free_cpu_memory (after fit) hands the kept memory back


_SETUP = """
import os, sys
from sft.pipeline.fit import setup_process
from hydra import compose, initialize_config_dir
from sft.config import CONFIG_DIR
with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
    cfg = compose("config", overrides=sys.argv[1:])
setup_process(cfg)
print(os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"))
"""


def _setup_process_env(*overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    return subprocess.run([sys.executable, "-c", _SETUP, *overrides], capture_output=True, text=True,
                          env={**clean, **(env or {})}, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_onednn_cache_is_capped_before_training_unless_the_environment_or_the_config_says_otherwise() -> None:
    out = _setup_process_env()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "64"
    assert _setup_process_env("onednn_primitive_cache_capacity=256").stdout.split()[-1] == "256"
    assert _setup_process_env("onednn_primitive_cache_capacity=null").stdout.split()[-1] == "None"
    assert _setup_process_env(env={"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}).stdout.split()[-1] == "1024"


def test_a_negative_onednn_cache_capacity_is_a_config_error_naming_the_setting() -> None:
    from sft.devices import limit_onednn_cache

    with pytest.raises(ConfigError, match=r"onednn_primitive_cache_capacity=-1: must be >= 0"):
        limit_onednn_cache(-1)
