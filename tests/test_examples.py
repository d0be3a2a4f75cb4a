"""The examples run as written (those that need no download; the published-head script runs on a
head and target the tests build)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import tiny_models as tm
from test_server import free_port

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(args: list[str], stdin: str = "", timeout: int = 600) -> str:
    r = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_demo_main_job(smollm2):
    out = run([sys.executable, "examples/demo.py", "--max-tokens", "48"])
    assert "outputs identical: True" in out and "tokens/s" in out


@pytest.mark.slow
def test_stream_completion_and_laptop_chat(smollm2):
    out = run([sys.executable, "examples/stream_completion.py", "Three colours of the rainbow are"])
    assert "verify rounds" in out and "mean accepted length" in out
    out = run([sys.executable, "examples/laptop_chat.py"], stdin="Say hello in one word.\nexit\n")
    assert "mean accepted length" in out and "speculation" in out


@pytest.mark.slow
def test_serve_example(smollm2, tmp_path):
    port = free_port()
    log = (tmp_path / "server.log").open("w")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, "examples/serve.py", "--port", str(port)], cwd=ROOT, env=ENV,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/v1/models", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(0.1)
        body = json.dumps({"model": "smollm2-eagle3", "max_tokens": 24, "temperature": 0,
                           "messages": [{"role": "user", "content": "Name a fruit."}]}).encode()
        req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert json.load(r)["choices"][0]["message"]["content"]
        with urllib.request.urlopen(base + "/v1/eagle3/stats", timeout=10) as r:
            assert json.load(r)["speculative"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_convert_published_head_script(tmp_path, targets, n_vocab):
    """The script as written, on a SpecForge-layout head built here instead of a download."""
    hf = tm.build_hf_head(tmp_path / "EAGLE3-tiny", tm.HeadSpec("specforge"), n_vocab, seed=5)
    gguf = tmp_path / "tiny.gguf"
    r = subprocess.run(["bash", "examples/convert_published_head.sh", str(hf), str(targets["llama"])], cwd=ROOT,
                       env={**ENV, "OUT": str(gguf)}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert gguf.exists() and "mean_accepted_length" in r.stdout
