"""`python -m llama_eagle3.server` with the real `openai` client on 127.0.0.1: the same text as
plain decoding at temperature 0, true log-probs, disconnects, concurrency, a bounded soak."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

N_CTX = 512
CHATS = ["the cat sat on", "in the beginning there", "once more we go", "a b c d"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory, targets, heads):
    port = free_port()
    cfg = tmp_path_factory.mktemp("server") / "config.json"
    # two models, as llama_cpp.server's config file allows: one speculative, one plain. Requests
    # queue (llama_cpp.server's default, interrupt_requests, cuts a running stream short instead)
    cfg.write_text(json.dumps({"host": "127.0.0.1", "port": port, "interrupt_requests": False, "models": [
        {"model": str(targets["llama"]), "model_alias": "tiny-eagle3", "n_ctx": N_CTX,
         "eagle3_head": str(heads["llama"]), "eagle3_p_min": 0.0, "eagle3_adaptive": False, "verbose": False},
        {"model": str(targets["llama"]), "model_alias": "tiny-plain", "n_ctx": N_CTX, "flash_attn": True,
         "verbose": False}]}))
    log_path = cfg.with_name("server.log")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, "-m", "llama_eagle3.server", "--config_file", str(cfg)],
                            stdout=log_path.open("w"), stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/v1/models", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("server exited: " + log_path.read_text()[-3000:])
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("server did not start")
    yield proc, base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="none", max_retries=0, timeout=120)


def chat_msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def ask_chat(client, model: str, text: str, n: int, stream: bool = False) -> str:
    kw = dict(model=model, messages=chat_msgs(text), max_tokens=n, temperature=0.0)
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw))
    return client.chat.completions.create(**kw).choices[0].message.content


def ask_completion(client, model: str, text: str, n: int, stream: bool = False) -> str:
    kw = dict(model=model, prompt=text, max_tokens=n, temperature=0.0)
    if stream:
        return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw))
    return client.completions.create(**kw).choices[0].text


@pytest.fixture(scope="module")
def plain(client):
    """The answers of the same server's plain model (same settings, the server's default sampling
    parameters: repeat penalty 1.1 included), asked first so the model switches only once."""
    out = {}
    for text in CHATS:
        for stream in (False, True):  # (streams drop bytes of an incomplete UTF-8 character: same for both)
            out["chat", text, stream] = ask_chat(client, "tiny-plain", text, 40, stream)
            out["completion", text, stream] = ask_completion(client, "tiny-plain", text, 40, stream)
    out["logprobs"] = client.completions.create(model="tiny-plain", prompt=CHATS[0], max_tokens=24, temperature=0.0,
                                                logprobs=3).choices[0].logprobs
    return out


def test_chat_and_completion_equal_plain(client, plain):
    for text in CHATS:
        for stream in (False, True):
            assert ask_chat(client, "tiny-eagle3", text, 40, stream) == plain["chat", text, stream], (text, stream)
            assert ask_completion(client, "tiny-eagle3", text, 40, stream) == plain["completion", text, stream]


def test_logprobs_are_the_targets(client, plain):
    """Each token's log-prob comes from the verify row that produced it: the target's own."""
    want = plain["logprobs"]
    got = client.completions.create(model="tiny-eagle3", prompt=CHATS[0], max_tokens=24, temperature=0.0,
                                    logprobs=3).choices[0].logprobs
    assert got.tokens == want.tokens
    for a, b in zip(got.token_logprobs, want.token_logprobs):
        assert abs(a - b) < 1e-2
    for a, b in zip(got.top_logprobs, want.top_logprobs):
        assert set(a) == set(b)


def test_disconnect_mid_stream_then_normal_request(client, plain):
    stream = client.chat.completions.create(model="tiny-eagle3", messages=chat_msgs(CHATS[2]), max_tokens=200,
                                            temperature=0.0, stream=True)
    for _, _chunk in zip(range(3), stream):
        pass
    stream.close()  # the client goes away mid-answer
    assert ask_chat(client, "tiny-eagle3", CHATS[1], 40) == plain["chat", CHATS[1], False]


def test_concurrent_clients_get_sequential_answers(client, plain):
    """8 clients at once: requests queue on the model; every answer equals the plain one."""
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            got[i] = ask_chat(client, "tiny-eagle3", CHATS[i % len(CHATS)], 40, stream=bool(i % 2))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert all(got[i] == plain["chat", CHATS[i % len(CHATS)], bool(i % 2)] for i in range(8)), got


def test_models_switch_and_stats(client, plain, server):
    assert ask_completion(client, "tiny-plain", CHATS[1], 40) == plain["completion", CHATS[1], False]
    with urllib.request.urlopen(server[1] + "/v1/eagle3/stats") as r:
        assert json.load(r)["speculative"] is False  # the plain model is loaded now
    assert ask_completion(client, "tiny-eagle3", CHATS[1], 40) == plain["completion", CHATS[1], False]
    with urllib.request.urlopen(server[1] + "/v1/eagle3/stats") as r:
        s = json.load(r)
    assert s["model"] == "tiny-eagle3" and s["speculative"] and s["stats"]["rounds"] > 0


SOAK = int(os.environ.get("LLAMA_EAGLE3_SOAK", "300"))
SOAK_RSS_BOUND_KIB = 32 * 1024


def test_soak_memory_is_bounded(client, server):
    """SOAK requests (streaming and not, completions and chat); resident memory after a warm-up
    grows by less than 32 MiB."""
    proc = server[0]

    def request(i: int) -> None:
        text = CHATS[i % len(CHATS)] + f" {i}"
        if i % 3 == 0:
            client.chat.completions.create(model="tiny-eagle3", messages=chat_msgs(text), max_tokens=16, temperature=0.0)
        elif i % 3 == 1:
            for _ in client.completions.create(model="tiny-eagle3", prompt=text, max_tokens=16, temperature=0.0,
                                               stream=True):
                pass
        else:
            client.completions.create(model="tiny-eagle3", prompt=text, max_tokens=16, temperature=0.7, seed=i)

    for i in range(30):
        request(i)
    before = rss_kib(proc.pid)
    for i in range(SOAK):
        request(i)
    after = rss_kib(proc.pid)
    print(f"server RSS after warm-up {before / 1024:.1f} MiB, after {SOAK} more requests {after / 1024:.1f} MiB")
    assert after - before < SOAK_RSS_BOUND_KIB
