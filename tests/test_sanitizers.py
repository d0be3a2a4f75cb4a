"""The C++ core under AddressSanitizer, LeakSanitizer and UBSan.

tests/sanitize/driver.cpp is built here with the extension's own sources (csrc/) against the
llama.cpp of the installed llama-cpp-python, and runs every object the extension creates through
its normal use, its error paths and its destruction, for several cycles, with no Python in the
process (so a leak report is never the interpreter's). A second run leaks one HeadRunner on purpose
and must be reported: the job can fail.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CYCLES = 8


def _llama_cpp_dirs() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations
    pkg = Path(spec.submodule_search_locations[0])
    include = pkg.parent / "include"
    assert (include / "llama.h").is_file() and (pkg / "lib").is_dir(), f"llama-cpp-python at {pkg} lacks headers/libs"
    return include, pkg / "lib"


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    cxx = shutil.which("g++") or shutil.which("c++")
    assert cxx, "a C++ compiler is needed (the extension's build needs one too)"
    include, lib = _llama_cpp_dirs()
    exe = tmp_path_factory.mktemp("asan") / "driver"
    cmd = [cxx, "-std=c++17", "-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=undefined", f"-I{include}", f"-I{ROOT / 'csrc'}",
           str(ROOT / "tests/sanitize/driver.cpp"), str(ROOT / "csrc/head_runner.cpp"), str(ROOT / "csrc/hidden_capture.cpp"),
           f"-L{lib}", "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{lib}", "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return exe


def _run(driver: Path, targets, heads, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    from eagle3_convert.gguf_io import read_head_gguf

    head = read_head_gguf(heads["llama"])
    d2t = tmp_path / "d2t.txt"
    d2t.write_text(" ".join(str(int(x)) for x in (head.d2t if head.d2t is not None else np.array([], int))))
    layers = ",".join(str(i) for i in head.config.target_layers)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    return subprocess.run([str(driver), str(targets["llama"]), str(heads["llama"]), str(d2t), layers, str(CYCLES), *extra],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_core_is_clean_under_address_and_leak_sanitizers(driver, targets, heads, tmp_path):
    r = _run(driver, targets, heads, tmp_path)
    assert r.returncode == 0 and f"{CYCLES} cycles ok" in r.stdout, r.stderr[-6000:]
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-6000:]


@pytest.mark.slow
def test_sanitizer_job_reports_a_leak(driver, targets, heads, tmp_path):
    r = _run(driver, targets, heads, tmp_path, "leak")
    assert r.returncode != 0 and "LeakSanitizer: detected memory leaks" in r.stderr, r.stderr[-3000:]
    assert "HeadRunner" in r.stderr
