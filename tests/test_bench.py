"""`llama-eagle3 bench` end to end on a tiny target: table, JSON and chart."""

from __future__ import annotations

import json

from llama_eagle3.cli import main


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


def test_divergence_measures_plain_logits_at_the_first_differing_token(targets):
    """The bench explains a greedy output that departs from plain decoding by plain's own logits
    at the first differing token: a near-tie (the backend's rounding) or a real difference."""
    import llama_cpp
    import numpy as np

    from llama_eagle3.bench import NEAR_TIE, _divergence

    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=256, verbose=False)
    want = plain.tokenize(b"the cat sat on")
    def last_logits(tokens: list[int]) -> np.ndarray:
        plain.reset()
        plain.eval(tokens)
        return np.ctypeslib.as_array(plain._ctx.get_logits_ith(-1), shape=(plain.n_vocab(),)).copy()

    for _ in range(12):
        want.append(int(np.argmax(last_logits(want))))
    assert _divergence(plain, want, want) is None and _divergence(plain, want, want[:-3]) is None
    i = len(want) - 5
    logits = last_logits(want[:i])
    worst, second = int(np.argmin(logits)), int(np.argsort(logits)[-2])
    d = _divergence(plain, want, want[:i] + [worst] + want[i + 1:])
    assert d["at"] == i and abs(d["gap"] - (logits[want[i]] - logits[worst])) < 1e-6 and d["gap"] > NEAR_TIE
    assert abs(_divergence(plain, want, want[:i] + [second])["gap"] - (logits[want[i]] - logits[second])) < 1e-6
