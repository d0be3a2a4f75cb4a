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

import llama_eagle3.rounds as rounds
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
            where = {"propose": (spec._engine.drafter, "propose"), "capture": (spec._engine.capture, "decode"),
                     "accept": (rounds, "accept_chain"), "truncate": (spec._engine, "truncate"),
                     "observe": (spec._engine.drafter, "observe")}[point]
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


def no_eog_bias(llm: llama_cpp.Llama) -> dict[int, float]:
    """A logit bias that bans every end-of-generation token (the tiny tokenizer has several)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return {t: -100.0 for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}


def test_long_greedy_run_and_fifty_turns_equal_plain(targets, heads):
    """4000 tokens in one generation (end-of-generation tokens banned) and a 50-turn chat.
    One thread: with several, llama.cpp attends a single token over >= 512 cells with a split-KV
    kernel whose rounding differs from the batched kernel (README, "The Python API")."""
    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=4096, n_threads=1, verbose=False, flash_attn=True)
    spec = make_spec(targets, heads, n_ctx=4096, n_threads=1, eagle3_draft_max=4)
    bias = no_eog_bias(plain)
    a = plain("once upon a time", max_tokens=4000, temperature=0.0, logit_bias=bias)
    b = spec("once upon a time", max_tokens=4000, temperature=0.0, logit_bias=bias)
    assert b["usage"]["completion_tokens"] == a["usage"]["completion_tokens"] >= 4000
    assert b["choices"][0]["text"] == a["choices"][0]["text"]

    plain2 = llama_cpp.Llama(str(targets["llama"]), n_ctx=4096, n_threads=1, verbose=False, flash_attn=True)
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
    cases, progress = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    from llama_eagle3 import Llama
    from eagle3_convert.cli import convert
    from eagle3_convert.errors import ConversionError
    results = []
    for i, case in enumerate(cases):
        progress.write_text(str(i))
        try:
            head = case["path"]
            if case["kind"] == "hf":
                head = case["path"] + ".gguf"
                convert(Path(case["path"]), case["target"], Path(head), "f32", log=lambda *a: None)
            # an accepted head must also load and draft: llama.cpp aborts on what it cannot use
            llm = Llama(case["target"], n_ctx=64, verbose=False, eagle3_head=head, eagle3_adaptive=False)
            llm.create_completion("the cat", max_tokens=6, temperature=0.0)
            llm.close()
            results.append("accepted")
        except (ValueError, ConversionError) as e:
            results.append("raised " + type(e).__name__ + ": " + str(e)[:200])
        except Exception as e:  # an exception of another type: reported by the test
            results.append("OTHER " + type(e).__name__ + ": " + str(e)[:200])
    progress.write_text("done")
    print(json.dumps(results))
""")


def _run_fuzz_cases(cases: list[dict], work: Path) -> tuple[list[str], list[dict]]:
    """Runs cases in a worker subprocess; a crash names its case and the rest still run.
    Returns each case's outcome and the crashed cases."""
    crashed: list[dict] = []
    results: list[str] = []
    start = 0
    while start < len(cases):
        (work / "batch.json").write_text(json.dumps(cases[start:]))
        progress = work / "progress"
        r = subprocess.run([sys.executable, "-c", FUZZ_WORKER, str(work / "batch.json"), str(progress)],
                           capture_output=True, text=True, timeout=1200)
        if r.returncode == 0:
            results += json.loads(r.stdout.strip().splitlines()[-1])
            break
        i = start + int(progress.read_text())
        crashed.append({**cases[i], "returncode": r.returncode,
                        "stderr": "\n".join(x for x in r.stderr.splitlines() if "error" in x.lower() or "GGML" in x)[-800:]})
        results.append("CRASH")
        start = i + 1
    return results, crashed


def _report(what: str, cases: list[dict], results: list[str], crashed: list[dict]) -> None:
    other = [(c["mutation"], res) for c, res in zip(cases, results) if res.startswith("OTHER")]
    print(f"{what}: {len(cases)} cases, {sum(r == 'accepted' for r in results)} accepted, "
          f"{sum(r.startswith('raised') for r in results)} raised a clear error, {len(other)} other exceptions, "
          f"{len(crashed)} crashes")
    assert not crashed, [(c["mutation"], c["stderr"]) for c in crashed[:3]]
    assert not other, other[:5]


FUZZ_SEED = int(os.environ.get("LLAMA_EAGLE3_FUZZ_SEED", "0"))


def _gguf_mutants(good: bytes, target: str, out: Path, rng: np.random.Generator, n: int) -> list[dict]:
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
        cases.append({"kind": "gguf", "path": str(p), "mutation": ["truncate", "header", "anywhere"][kind], "target": target})
    return cases


def _config_mutants(hf: Path, target: str, out: Path, rng: np.random.Generator, n: int) -> list[dict]:
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
        cases.append({"kind": "hf", "path": str(d), "target": target,
                      "mutation": ["drop key", "wrong type", "extra key", "damaged weights"][kind] + f" ({key})"})
    return cases


FUZZ_CASES = int(os.environ.get("LLAMA_EAGLE3_FUZZ_CASES", "240"))


def test_fuzz_head_loader_and_converter(tmp_path, targets, heads, n_vocab):
    """Mutated head GGUFs (truncated, header bytes, any bytes) through Llama(eagle3_head=...), and
    mutated HF heads (config keys dropped / mistyped / added, damaged safetensors) through the
    converter: each ends accepted or in ValueError/ConversionError; the worker never dies."""
    rng = np.random.default_rng(FUZZ_SEED)
    hf = tm.build_hf_head(tmp_path / "hf", tm.HeadSpec("specforge"), n_vocab, seed=1)
    target = str(targets["llama"])
    cases = (_gguf_mutants(heads["llama"].read_bytes(), target, tmp_path, rng, FUZZ_CASES // 2)
             + _config_mutants(hf, target, tmp_path, rng, FUZZ_CASES - FUZZ_CASES // 2))
    _report("mutation fuzzer", cases, *_run_fuzz_cases(cases, tmp_path))


# ---- structured fuzzing (hypothesis) --------------------------------------------------------------

HYPOTHESIS_CASES = int(os.environ.get("LLAMA_EAGLE3_HYPOTHESIS_CASES", "160"))
_DTYPES = [np.float16, np.float64, np.int32, np.int64, np.uint8, np.bool_]
_LAYOUTS = ["specforge", "angelslim", "speculators", "eagle"]


def _structured_case(draw) -> dict:
    """One HF head (any layout, safetensors or .bin) with one structural defect, or a valid head
    converted against a target it does not fit."""
    from hypothesis import strategies as st

    spec = tm.HeadSpec(draw(st.sampled_from(_LAYOUTS)), fmt=draw(st.sampled_from(["safetensors", "bin"])),
                       norm_before_fc=draw(st.booleans()))
    kind = draw(st.sampled_from(["shape", "dtype", "rename", "drop", "extra", "d2t", "config", "target"]))
    case = {"spec": spec, "kind": kind}
    names = sorted(tm.random_head_tensors(spec, 1 << 9))  # the tensor names of this layout (canonical)
    if kind in ("shape", "dtype", "rename", "drop"):
        case["tensor"] = draw(st.sampled_from(names))
    if kind == "shape":
        case["how"] = draw(st.sampled_from(["drop_row", "drop_col", "transpose", "add_axis", "scalar", "empty", "double"]))
    elif kind == "dtype":
        case["dtype"] = draw(st.sampled_from(_DTYPES))
    elif kind == "rename":
        case["new"] = draw(st.sampled_from(["x.", "model.", "layers.1.", "lm_head"])) + case["tensor"].split(".")[-2 if "." in case["tensor"] else -1]
    elif kind == "extra":
        case["new"] = draw(st.sampled_from(["midlayer.self_attn.q_proj.bias", "layers.1.mlp.up_proj.weight",
                                            "embed_tokens.weight", "fc.bias", "unrelated"]))
        case["shape"] = draw(st.lists(st.integers(0, 70), min_size=0, max_size=3))
    elif kind == "d2t":
        case["how"] = draw(st.sampled_from(["past_vocab", "negative", "duplicate", "short", "float", "2d"]))
        case["at"] = draw(st.integers(0, tm.DRAFT_VOCAB - 1))
    elif kind == "config":
        case["key"] = draw(st.sampled_from(["hidden_size", "intermediate_size", "num_attention_heads",
                                            "num_key_value_heads", "head_dim", "vocab_size", "draft_vocab_size",
                                            "rms_norm_eps", "rope_theta", "max_position_embeddings",
                                            "target_hidden_size", "num_hidden_layers"]))
        case["value"] = draw(st.one_of(st.integers(-2**33, 2**33), st.floats(allow_nan=True, allow_infinity=True),
                                       st.text(max_size=8), st.none(), st.lists(st.integers(0, 9), max_size=3)))
    elif kind == "target":
        case["target"] = draw(st.sampled_from(["qwen2", "gemma3", "smollm2"]))
    return case


def _mutate_tensor(a: np.ndarray, how: str) -> np.ndarray:
    return {"drop_row": lambda: a[:-1], "drop_col": lambda: a[..., :-1] if a.ndim > 1 else a[:0],
            "transpose": lambda: a.T.copy(), "add_axis": lambda: a[None], "scalar": lambda: a.reshape(-1)[:1].reshape(()),
            "empty": lambda: a[:0], "double": lambda: np.concatenate([a, a])}[how]()


def _materialise(case: dict, directory: Path, n_vocab: int, targets: dict, smollm2: Path) -> dict:
    spec = case["spec"]
    tensors = tm.random_head_tensors(spec, n_vocab, seed=3)
    cfg = tm.head_config(spec, n_vocab)
    kind = case["kind"]
    if kind == "shape":
        tensors[case["tensor"]] = _mutate_tensor(tensors[case["tensor"]], case["how"])
    elif kind == "dtype":
        tensors[case["tensor"]] = tensors[case["tensor"]].astype(case["dtype"])
    elif kind == "rename":
        tensors[case["new"]] = tensors.pop(case["tensor"])
    elif kind == "drop":
        del tensors[case["tensor"]]
    elif kind == "extra":
        tensors[case["new"]] = np.ones(case["shape"], np.float32)
    elif kind == "d2t" and "d2t" in tensors:
        d2t, at = tensors["d2t"].copy(), case["at"]
        ids = d2t + np.arange(len(d2t))  # HF stores offsets: id = i + d2t[i]
        how = case["how"]
        if how == "past_vocab":
            d2t[at] = n_vocab + 3 - at
        elif how == "negative":
            d2t[at] = -at - 1
        elif how == "duplicate":
            d2t[at] = ids[(at + 1) % len(ids)] - at
        tensors["d2t"] = {"short": d2t[:-1], "float": d2t.astype(np.float32) + 0.5, "2d": d2t[None]}.get(how, d2t)
    elif kind == "config":
        where = cfg.get("transformer_layer_config", cfg) if case["key"] in cfg.get("transformer_layer_config", {}) else cfg
        where[case["key"]] = case["value"]
    tm.write_hf_head(directory, spec, tensors, cfg)
    target = {"qwen2": targets["qwen2"], "gemma3": targets["gemma3"], "smollm2": smollm2}.get(case.get("target", ""),
                                                                                              targets["llama"])
    detail = {k: (v.__name__ if isinstance(v, type) else v) for k, v in case.items() if k not in ("spec", "kind")}
    return {"kind": "hf", "path": str(directory), "target": str(target),
            "mutation": f"{spec.layout}/{spec.fmt} {kind} {detail}"}


def test_structured_fuzz_with_hypothesis(tmp_path, targets, n_vocab, smollm2):
    """Hypothesis draws HF heads of every layout with one structural defect (a tensor of the wrong
    shape, dtype or name, missing or extra; d2t past the vocabulary, negative, duplicated, short,
    float; a config value of any type and size) or a valid head against a target of another
    architecture or vocabulary (SmolLM2). Each is converted and, if accepted, loaded and asked
    for a completion: every case ends accepted or in ValueError/ConversionError, and no worker dies."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    cases: list[dict] = []
    drawn = iter(range(10**6))

    @settings(max_examples=HYPOTHESIS_CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def draw_case(data) -> None:
        case = _structured_case(data.draw)
        cases.append(_materialise(case, tmp_path / f"case-{next(drawn)}", n_vocab, targets, smollm2))

    draw_case()
    results, crashed = _run_fuzz_cases(cases, tmp_path)
    kinds = sorted({c["mutation"].split()[1] for c in cases})
    assert len(kinds) == 8, kinds  # every kind of defect was drawn
    _report("hypothesis structured fuzzer", cases, results, crashed)
    # not everything is refused: a valid head on a compatible target of another architecture converts and runs
    compatible = [r for c, r in zip(cases, results) if "'qwen2'" in c["mutation"] or "'gemma3'" in c["mutation"]]
    assert compatible and all(r == "accepted" for r in compatible), compatible[:3]
