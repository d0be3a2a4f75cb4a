"""`llama-eagle3 bench` end to end on a tiny target: table, JSON and chart."""

from __future__ import annotations

import json

import llama_cpp
import pytest

from llama_eagle3 import Llama, bench
from llama_eagle3.cli import main
from llama_eagle3.fidelity import EXPLAINED, UNEXPLAINED, DecodeLog, Diagnosis, redraw


def test_bench_writes_json_and_chart(tmp_path, targets, heads, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["the cat sat on", "once more we go", "hello"]))
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    main(["bench", "--model", str(targets["llama"]), "--head", str(heads["llama"]), "--prompts", str(prompts),
          "--max-tokens", "24", "--methods", "plain,control,lookup,eagle3,tree,auto", "--repeats", "2", "--json", str(out), "--png", str(png)])
    s = json.loads(out.read_text())
    assert list(s["methods"]) == ["plain", "control", "lookup", "eagle3", "tree", "auto"] and s["n_prompts"] == 3
    assert s["repeats"] == 2
    for name in ("control", "lookup", "eagle3", "tree", "auto"):
        assert s["methods"][name]["identical"] == 3, name  # greedy: every method reproduces plain
    chain = s["speculative"]["eagle3"]
    assert chain["rounds"] > 0 and len(chain["acceptance_at"]) == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean accepted length" in capsys.readouterr().out


def test_upstream_output_that_ran_past_max_tokens_counts_as_identical_only_by_prefix():
    from llama_eagle3.bench import _same_output

    plain = {"tokens": 4, "text": "a b c d"}
    assert _same_output({"tokens": 6, "text": "a b c d e f"}, plain, max_tokens=4)  # overshoot
    assert not _same_output({"tokens": 6, "text": "a b x d e f"}, plain, max_tokens=4)
    assert not _same_output({"tokens": 4, "text": "a b c d e"}, plain, max_tokens=4)
    eos = {"tokens": 3, "text": "a b c"}  # plain stopped at end of generation: the texts must be equal
    assert _same_output({"tokens": 3, "text": "a b c"}, eos, max_tokens=4)
    assert not _same_output({"tokens": 5, "text": "a b c d e"}, eos, max_tokens=4)


def _prompts(tmp_path, texts=("the cat sat on", "once more we go", "hello")):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts))
    return path


def _named_instances(monkeypatch) -> None:
    """bench's instances carry their method's name (bench_name), for a _run stand-in."""
    make = bench._make

    def named(name, *args):
        llm = make(name, *args)
        llm.bench_name = name
        return llm

    monkeypatch.setattr(bench, "_make", named)


def test_diagnosing_a_departure_leaves_every_benchmarked_instance_as_it_was(tmp_path, targets, heads, monkeypatch):
    """A departure (forged here: control's ids say it chose another token) is diagnosed on a
    separate instance: each benchmarked instance starts its next run in the state its previous
    run left (the old diagnosis re-evaluated the prefix on the plain instance itself, so every
    later prompt compared against a plain decoding with other numerics)."""
    run, after = bench._run, {}

    def state(llm) -> tuple:
        s = llm.save_state()
        return s.n_tokens, s.input_ids.tobytes(), bytes(s.llama_state)

    def checked_run(llm, messages, *args):
        if id(llm) in after:
            assert state(llm) == after[id(llm)], f"{llm.bench_name}'s state changed between its runs"
        text, n, dt, ids = run(llm, messages, *args)
        after[id(llm)] = state(llm)
        if llm.bench_name == "control" and messages[-1]["content"] == "the cat sat on":
            ids[-2] = (ids[-2] + 1) % llm.n_vocab()
            text += " (forged)"
        return text, n, dt, ids

    _named_instances(monkeypatch)
    monkeypatch.setattr(bench, "_run", checked_run)
    s = bench.bench(str(targets["llama"]), str(heads["llama"]), _prompts(tmp_path), max_tokens=16,
                    methods=("plain", "control", "eagle3"), log=lambda *a: None)
    assert s["methods"]["control"]["departures"] == s["methods"]["control"]["unexplained"] == 1
    assert s["methods"]["eagle3"]["departures"] == 0 and s["methods"]["eagle3"]["identical"] == 3
    d = s["rows"][0]["control"]["divergence"]
    assert d["verdict"] == UNEXPLAINED and not d["explained"]
    lines: list[str] = []
    bench.print_table(s, log=lines.append)
    assert any(ln.startswith("control: 1 of 3 outputs depart") and "0 explained" in ln and "1 unexplained" in ln
               for ln in lines), lines


def test_texts_compared_come_from_the_first_run_and_timings_from_the_fastest(tmp_path, targets, heads, monkeypatch):
    """With --repeats, a method's text is its first run's, compared with plain's first run, while
    its time is its fastest run's. The old bench kept the fastest run's text, so a later run's
    text (plain llama-cpp-python's own greedy text changes with its cache state) was compared."""
    run = bench._run

    def later_runs_differ(llm, messages, *args):
        text, n, dt, ids = run(llm, messages, *args)
        key = (llm.bench_name, messages[-1]["content"])
        runs[key] = runs.get(key, 0) + 1
        if llm.bench_name == "control" and runs[key] == 2:  # its second run of a prompt: fastest, other text
            return text + " (second run)", n, 1e-6, ids
        return text, n, dt, ids

    runs: dict = {}
    _named_instances(monkeypatch)
    monkeypatch.setattr(bench, "_run", later_runs_differ)
    s = bench.bench(str(targets["llama"]), str(heads["llama"]), _prompts(tmp_path), max_tokens=8,
                    methods=("plain", "control"), repeats=2, log=lambda *a: None)
    assert runs[("control", "hello")] == 2
    assert s["methods"]["control"]["identical"] == 3 and s["methods"]["control"]["departures"] == 0
    assert all(r["control"]["seconds"] == 1e-6 and "second run" not in r["control"]["text"] for r in s["rows"])


def test_every_run_starts_from_an_empty_cache(targets):
    """A bench run decodes the whole prompt, whatever the instance held: the old one reused the
    cached prefix, so a repeated prompt decoded its last token alone, other batches than the first
    run's (and plain llama-cpp-python then gives other greedy text on long prompts)."""
    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=256, verbose=False, flash_attn=True)
    log = DecodeLog(plain)
    messages = [{"role": "user", "content": "the cat sat on"}]
    firsts = []
    for _ in range(2):
        log.start()
        bench._run(plain, messages, 4)
        log.stop()
        firsts.append(log.batches[0])
    assert firsts[0] == firsts[1] and firsts[1].positions[0] == 0 and len(firsts[1].tokens) > 1


GENERATIONS = ["the cat sat on", "once more we go", "hello", "it is what it is, or", "in the beginning of the",
               "a b c d e", "we the people", "to be or not to be"]


def _recorded(llm, log: DecodeLog, prompt: str, n: int, temp: float = 0.0, seed: int = 0) -> list[int]:
    """n tokens generated from an empty cache (greedy, or sampled at temp with seed), recorded;
    the ids the target evaluated."""
    llm.reset()
    llm.set_seed(seed)
    log.start()
    for k, _ in enumerate(llm.generate(llm.tokenize(prompt.encode()), temp=temp), 1):
        if k == n:
            break
    log.stop()
    return llm._input_ids.tolist()


@pytest.mark.parametrize("width", [1, 3])
def test_a_recorded_generation_replays_to_its_own_tokens(width, targets, heads):
    """The exact test's basis: replaying a generation's recorded decodes (chain and tree verify
    batches, rejected rows and other branches included) on a separate instance draws every
    token the generation committed, greedy or sampled."""
    settings = dict(n_ctx=512, n_threads=2, flash_attn=True)
    spec = Llama(str(targets["llama"]), verbose=False, eagle3_head=str(heads["llama"]), eagle3_p_min=0.0,
                 eagle3_adaptive=False, eagle3_draft_max=4, eagle3_tree_width=width, **settings)
    log, diagnosis = DecodeLog(spec), Diagnosis(str(targets["llama"]), settings)
    for seed, (prompt, temp) in enumerate([(GENERATIONS[0], 0.0), (GENERATIONS[1], 0.0), (GENERATIONS[2], 0.8)]):
        ids = _recorded(spec, log, prompt, 80, temp, seed)
        n_prompt = len(spec.tokenize(prompt.encode()))
        again = redraw(diagnosis.twin(log.n_seq_max), log, ids, len(ids) - 1)
        assert again.first == n_prompt and again.tokens == ids[n_prompt:], prompt
    assert log.n_seq_max == (12 if width > 1 else 1) and spec.speculative_stats()["rounds"] > 0
    diagnosis.close()


def test_departures_where_attention_depends_on_the_batch_are_explained_exactly(targets, heads):
    """Without flash attention llama.cpp's attention rounds differently in a batch than for one
    token (README), so the chain's greedy text departs from plain decoding's on some prompts: each
    departure is explained by the batch kernel (both tokens are the target's argmax at the rows that
    chose them), and a token the target did not choose is not. The old test only asked whether
    plain's top two logits were within 0.05."""
    settings = dict(n_ctx=512, n_threads=2, flash_attn=False)
    plain = llama_cpp.Llama(str(targets["llama"]), verbose=False, **settings)
    with pytest.warns(UserWarning, match="flash_attn=False"):
        spec = Llama(str(targets["llama"]), verbose=False, eagle3_head=str(heads["llama"]), eagle3_p_min=0.0,
                     eagle3_adaptive=False, eagle3_draft_max=4, **settings)
    logs, diagnosis = (DecodeLog(plain), DecodeLog(spec)), Diagnosis(str(targets["llama"]), settings)
    found = []
    for prompt in GENERATIONS:
        want, got = _recorded(plain, logs[0], prompt, 120), _recorded(spec, logs[1], prompt, 120)
        d = diagnosis.explain((want, logs[0]), {"chain": (got, logs[1])}).get("chain")
        if d is not None:
            found.append(d)
            assert d["explained"] and d["gap"] >= 0 and d["plain_gap"] >= 0 and d["rows"] == 5, (prompt, d)
            forged = got[: d["at"]] + [next(t for t in range(10) if t not in (d["token"], d["plain_token"]))]
            assert not diagnosis.explain((want, logs[0]), {"forged": (forged, logs[1])})["forged"]["explained"]
    assert found, "no prompt departed: the batch-dependent attention this test relies on rounded alike"
    diagnosis.close()


def test_sampled_departures_where_attention_depends_on_the_batch_are_explained_exactly(targets, heads):
    """Sampled (temperature 0.8, seed per prompt), the chain draws once per committed token in
    position order as plain sampling does, so where batch-dependent attention (flash_attn=False)
    moves the logits enough to change a draw, both sides' tokens are what the target's own
    sampler draws, same seed, same order of draws, from the logits each side computed: explained.
    A token that sampler would not draw is not. (The old diagnosis covered greedy runs only.)"""
    settings = dict(n_ctx=512, n_threads=2, flash_attn=False)
    plain = llama_cpp.Llama(str(targets["llama"]), verbose=False, **settings)
    with pytest.warns(UserWarning, match="flash_attn=False"):
        spec = Llama(str(targets["llama"]), verbose=False, eagle3_head=str(heads["llama"]), eagle3_p_min=0.0,
                     eagle3_adaptive=False, eagle3_draft_max=4, **settings)
    logs, diagnosis = (DecodeLog(plain), DecodeLog(spec)), Diagnosis(str(targets["llama"]), settings)
    found = []
    for seed, prompt in enumerate(GENERATIONS):
        want, got = (_recorded(llm, log, prompt, 120, 0.8, seed) for llm, log in zip((plain, spec), logs))
        d = diagnosis.explain((want, logs[0]), {"chain": (got, logs[1])}).get("chain")
        if d is None:
            continue
        found.append(d)
        assert d["verdict"] == EXPLAINED and d["rows"] == 5, (prompt, d)
        assert (d["drawn"], d["plain_drawn"]) == (d["token"], d["plain_token"])
        forged = got[: d["at"]] + [next(t for t in range(10) if t not in (d["token"], d["plain_token"]))]
        f = diagnosis.explain((want, logs[0]), {"forged": (forged, logs[1])})["forged"]
        assert f["verdict"] == UNEXPLAINED and f["drawn"] == d["token"], f
        if len(found) == 2:
            break
    assert found, "no prompt departed: the batch-dependent attention this test relies on rounded alike"
    diagnosis.close()


def test_sampled_bench_runs_are_diagnosed(tmp_path, targets, heads, monkeypatch):
    """`bench --temperature 0.7` recorded nothing and left every departure's divergence empty; now
    a sampled departure is diagnosed as a greedy one is (forged here: control's ids say it drew
    another token, which the target's own sampler does not draw)."""
    run = bench._run

    def forged_run(llm, messages, *args):
        text, n, dt, ids = run(llm, messages, *args)
        if llm.bench_name == "control":
            ids[-2] = (ids[-2] + 1) % llm.n_vocab()
            text += " (forged)"
        return text, n, dt, ids

    _named_instances(monkeypatch)
    monkeypatch.setattr(bench, "_run", forged_run)
    s = bench.bench(str(targets["llama"]), str(heads["llama"]), _prompts(tmp_path, ("hello",)), max_tokens=12,
                    methods=("plain", "control", "eagle3"), temperature=0.7, log=lambda *a: None)
    assert s["methods"]["eagle3"]["identical"] == 1 and s["methods"]["eagle3"]["departures"] == 0
    assert s["methods"]["control"]["departures"] == s["methods"]["control"]["unexplained"] == 1
    d = s["rows"][0]["control"]["divergence"]
    assert d["verdict"] == UNEXPLAINED and d["drawn"] != d["token"]
    lines: list[str] = []
    bench.print_table(s, log=lines.append)
    assert any(ln.startswith("control: 1 of 1 outputs depart from plain text") for ln in lines), lines
