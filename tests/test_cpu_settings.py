"""The process-wide CPU setting sft applies before training when asked (sft.devices): a cap on oneDNN's kernel
cache, unless the environment sets one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sft.errors import ConfigError

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


def test_onednn_cache_is_capped_before_training_when_the_config_asks_and_the_environment_does_not() -> None:
    out = _setup_process_env("onednn_primitive_cache_capacity=64")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "64"
    assert _setup_process_env().stdout.split()[-1] == "None"  # the default: oneDNN's own
    assert _setup_process_env("onednn_primitive_cache_capacity=64",
                              env={"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}).stdout.split()[-1] == "1024"


def test_a_negative_onednn_cache_capacity_is_a_config_error_naming_the_setting() -> None:
    from sft.devices import limit_onednn_cache

    with pytest.raises(ConfigError, match=r"onednn_primitive_cache_capacity=-1: must be >= 0"):
        limit_onednn_cache(-1)
