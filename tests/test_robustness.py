"""Nothing a user does corrupts a generation or kills the interpreter: interrupts at every point of
a round, two threads on one Llama, long runs and 50-turn sessions, create/close cycles, and a
mutation fuzzer for the head loader and the converter (cases run in a worker subprocess whose
crash would name the case)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

import llama_eagle3.llama as engine
import tiny_models as tm
from llama_eagle3 import Llama

PROMPTS = ["the cat sat on", "in the beginning there", "once more we go"]


def make_spec(targets, heads, **kw) -> Llama:
    kw = {"n_ctx": 512, "eagle3_p_min": 0.0, "eagle3_adaptive": False, **kw}
    return Llama(str(targets["llama"]), verbose=False, eagle3_head=str(heads["llama"]), **kw)


@pytest.fixture(scope="module")
def plain(targets):
    return llama_cpp.Llama(str(targets["llama"]), n_ctx=4096, verbose=False, flash_attn=True)


def text(llm, prompt: str, n: int = 40) -> str:
    return llm(prompt, max_tokens=n, temperature=0.0)["choices"][0]["text"]


class Interrupt:
    """Replaces obj.name so that its k-th call raises KeyboardInterrupt before or after the call."""

    def __init__(self, obj, name: str, k: int, after: bool):
        self.obj, self.name, self.k, self.after, self.calls = obj, name, k, after, 0
        self.orig = getattr(obj, name)
        setattr(obj, name, self)

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls == self.k and not self.after:
            raise KeyboardInterrupt
        out = self.orig(*a, **kw)
        if self.calls == self.k and self.after:
            raise KeyboardInterrupt
        return out

    def remove(self) -> None:
        setattr(self.obj, self.name, self.orig)


@pytest.mark.parametrize("point", ["propose", "capture", "accept", "truncate", "observe"])
def test_keyboard_interrupt_anywhere_in_a_round_leaves_a_consistent_state(point, targets, heads, plain):
    want = {p: text(plain, p) for p in PROMPTS}
    spec = make_spec(targets, heads, eagle3_draft_max=3)
    n = 0
    for k in (1, 2, 5, 9):
        for after in (False, True):
            where = {"propose": (spec._spec, "propose"), "capture": (spec._capture, "decode"),
                     "accept": (engine, "accept_chain"), "truncate": (spec, "_truncate"),
                     "observe": (spec._spec, "observe")}[point]
            trap = Interrupt(*where, k, after)
            try:
                with pytest.raises(KeyboardInterrupt):
                    text(spec, PROMPTS[k % 3], 60)
            finally:
                trap.remove()
            for p in PROMPTS:  # the next calls (prefix reuse from the interrupted state) match plain
                assert text(spec, p) == want[p], (point, k, after, p)
                n += 1
    assert n == 24


def test_two_threads_on_one_llama_serialise_or_raise(targets, heads, plain):
    want = {p: text(plain, p, 60) for p in PROMPTS}
    spec = make_spec(targets, heads, eagle3_draft_max=3)
    done: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        for j in range(6):
            p = PROMPTS[(i + j) % 3]
            try:
                done.append((p, text(spec, p, 60)))
            except RuntimeError as e:
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(done) + len(errors) == 12 and done
    assert all(out == want[p] for p, out in done)  # never a corrupted output
    assert all("superseded" in str(e) for e in errors)
    assert text(spec, PROMPTS[0], 60) == want[PROMPTS[0]]


def test_an_open_stream_superseded_by_a_new_generation_raises(targets, heads, plain):
    spec = make_spec(targets, heads)
    stream = spec.generate(spec.tokenize(PROMPTS[0].encode()), temp=0.0)
    for _ in range(3):
        next(stream)
    assert text(spec, PROMPTS[1]) == text(plain, PROMPTS[1])
    with pytest.raises(RuntimeError, match="superseded"):
        next(stream)


def test_long_greedy_run_and_fifty_turns_equal_plain(targets, heads, plain):
    """4000 tokens in one generation (end-of-text banned: a logits processor) and a 50-turn chat."""
    spec = make_spec(targets, heads, n_ctx=4096, eagle3_draft_max=4)
    no_eos = {plain.token_eos(): -100.0}
    a = plain("once upon a time", max_tokens=4000, temperature=0.0, logit_bias=no_eos)
    b = spec("once upon a time", max_tokens=4000, temperature=0.0, logit_bias=no_eos)
    assert b["usage"]["completion_tokens"] == a["usage"]["completion_tokens"] >= 4000
    assert b["choices"][0]["text"] == a["choices"][0]["text"]

    plain2 = llama_cpp.Llama(str(targets["llama"]), n_ctx=4096, verbose=False, flash_attn=True)
    msgs_a: list[dict] = []
    msgs_b: list[dict] = []
    for turn in range(50):
        q = {"role": "user", "content": f"{PROMPTS[turn % 3]} {turn}"}
        ra = plain2.create_chat_completion(msgs_a + [q], max_tokens=12, temperature=0.0)["choices"][0]["message"]
        rb = spec.create_chat_completion(msgs_b + [q], max_tokens=12, temperature=0.0)["choices"][0]["message"]
        assert rb["content"] == ra["content"], turn
        msgs_a, msgs_b = msgs_a + [q, ra], msgs_b + [q, rb]


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


CYCLES = int(os.environ.get("LLAMA_EAGLE3_CYCLES", "500"))


def test_create_generate_close_cycles_release_everything(targets, heads):
    def cycle() -> None:
        llm = make_spec(targets, heads, n_ctx=256)
        text(llm, PROMPTS[0], 8)
        llm.close()

    for _ in range(20):
        cycle()
    rss, fds, threads = _rss_kib(), len(os.listdir("/proc/self/fd")), threading.active_count()
    for _ in range(CYCLES):
        cycle()
    grown = _rss_kib() - rss
    print(f"{CYCLES} create/generate/close cycles: RSS {rss / 1024:.1f} -> {(rss + grown) / 1024:.1f} MiB, "
          f"fds {fds} -> {len(os.listdir('/proc/self/fd'))}, threads {threads} -> {threading.active_count()}")
    assert len(os.listdir("/proc/self/fd")) == fds and threading.active_count() == threads
    assert grown < 24 * 1024  # a leak of the head context (~1 MiB a cycle) would be hundreds of MiB


# ---- fuzzing ------------------------------------------------------------------------------------

FUZZ_WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    cases, target, progress = json.loads(Path(sys.argv[1]).read_text()), sys.argv[2], Path(sys.argv[3])
    from llama_eagle3 import Llama
    from eagle3_convert.cli import convert
    from eagle3_convert.errors import ConversionError
    results = []
    for i, case in enumerate(cases):
        progress.write_text(str(i))
        try:
            if case["kind"] == "gguf":
                Llama(target, n_ctx=64, verbose=False, eagle3_head=case["path"]).close()
            else:
                convert(Path(case["path"]), target, Path(case["path"] + ".gguf"), "f32", log=lambda *a: None)
            results.append("accepted")
        except (ValueError, ConversionError) as e:
            results.append("raised " + type(e).__name__ + ": " + str(e)[:200])
        except Exception as e:  # an exception of another type: reported by the test
            results.append("OTHER " + type(e).__name__ + ": " + str(e)[:200])
    progress.write_text("done")
    print(json.dumps(results))
""")

FUZZ_SEED = int(os.environ.get("LLAMA_EAGLE3_FUZZ_SEED", "0"))


def _gguf_mutants(good: bytes, out: Path, rng: np.random.Generator, n: int) -> list[dict]:
    cases = []
    for i in range(n):
        data = bytearray(good)
        kind = i % 3
        if kind == 0:  # truncated
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 1:  # bytes flipped in the header (keys, types, shapes, offsets)
            for _ in range(int(rng.integers(1, 8))):
                j = int(rng.integers(0, min(len(data), 4096)))
                data[j] = int(rng.integers(0, 256))
        else:  # bytes flipped anywhere (tensor data included)
            for _ in range(int(rng.integers(1, 64))):
                j = int(rng.integers(0, len(data)))
                data[j] = int(rng.integers(0, 256))
        p = out / f"mutant-{i}.gguf"
        p.write_bytes(bytes(data))
        cases.append({"kind": "gguf", "path": str(p), "mutation": ["truncate", "header", "anywhere"][kind]})
    return cases


def _config_mutants(hf: Path, out: Path, rng: np.random.Generator, n: int) -> list[dict]:
    base = json.loads((hf / "config.json").read_text())
    weights = (hf / "model.safetensors").read_bytes()
    junk = [None, -1, 0, 3.5, "x", [], {}, [1, 2], True, 10**9]
    cases = []
    for i in range(n):
        cfg = json.loads(json.dumps(base))
        d = out / f"hf-{i}"
        d.mkdir()
        w = weights
        kind = i % 4
        keys = sorted(cfg)
        key = keys[int(rng.integers(0, len(keys)))]
        if kind == 0:
            del cfg[key]
        elif kind == 1:
            cfg[key] = junk[int(rng.integers(0, len(junk)))]
        elif kind == 2:
            cfg[f"extra_{i}"] = junk[int(rng.integers(0, len(junk)))]
        else:  # a damaged or truncated safetensors file
            b = bytearray(weights)
            if rng.random() < 0.5:
                b = b[: int(rng.integers(0, len(b)))]
            else:
                for _ in range(int(rng.integers(1, 16))):
                    j = int(rng.integers(0, min(len(b), 2048)))
                    b[j] = int(rng.integers(0, 256))
            w = bytes(b)
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "model.safetensors").write_bytes(w)
        cases.append({"kind": "hf", "path": str(d), "mutation": ["drop key", "wrong type", "extra key",
                                                                 "damaged weights"][kind] + f" ({key})"})
    return cases


FUZZ_CASES = int(os.environ.get("LLAMA_EAGLE3_FUZZ_CASES", "240"))


def test_fuzz_head_loader_and_converter(tmp_path, targets, heads, n_vocab):
    """Mutated head GGUFs (truncated, header bytes, any bytes) through Llama(eagle3_head=...), and
    mutated HF heads (config keys dropped / mistyped / added, damaged safetensors) through the
    converter: each ends accepted or in ValueError/ConversionError; the worker never dies."""
    rng = np.random.default_rng(FUZZ_SEED)
    hf = tm.build_hf_head(tmp_path / "hf", tm.HeadSpec("specforge"), n_vocab, seed=1)
    cases = (_gguf_mutants(heads["llama"].read_bytes(), tmp_path, rng, FUZZ_CASES // 2)
             + _config_mutants(hf, tmp_path, rng, FUZZ_CASES - FUZZ_CASES // 2))
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    crashed: list[dict] = []
    results: list[str] = []
    start = 0
    while start < len(cases):  # a crash names its case; the rest of the cases still run
        (tmp_path / "batch.json").write_text(json.dumps(cases[start:]))
        progress = tmp_path / "progress"
        r = subprocess.run([sys.executable, "-c", FUZZ_WORKER, str(tmp_path / "batch.json"), str(targets["llama"]),
                            str(progress)], capture_output=True, text=True, timeout=1200)
        if r.returncode == 0:
            results += json.loads(r.stdout.strip().splitlines()[-1])
            break
        i = start + int(progress.read_text())
        crashed.append({**cases[i], "returncode": r.returncode,
                        "stderr": "\n".join(x for x in r.stderr.splitlines() if "error" in x.lower() or "GGML" in x)[-800:]})
        results.append("CRASH")
        start = i + 1
    other = [(c, res) for c, res in zip(cases, results) if res.startswith("OTHER")]
    print(f"fuzzed {len(cases)} cases: {sum(r == 'accepted' for r in results)} accepted, "
          f"{sum(r.startswith('raised') for r in results)} raised a clear error, {len(other)} other exceptions, "
          f"{len(crashed)} crashes")
    assert not crashed and not other, ([(c["mutation"], c["stderr"]) for c in crashed[:3]], other[:5])
    assert not other, [(c["mutation"], res) for c, res in other[:5]]
