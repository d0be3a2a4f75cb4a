"""eagle3_head="org/name": a real huggingface_hub reading a hub cache this test lays out in the
library's own format (models--org--name/{refs,snapshots,blobs}), offline (HF_HUB_OFFLINE=1); no
network, no mock of huggingface_hub. The head is converted once into LLAMA_EAGLE3_CACHE."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
from pathlib import Path

import llama_cpp
import pytest

import tiny_models as tm
from llama_eagle3 import Llama, hub

HEAD_REPO, TARGET_REPO = "tiny-org/tiny-eagle3-head", "tiny-org/tiny-target-GGUF"
KW = dict(n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
SPEC = dict(eagle3_adaptive=False, eagle3_p_min=0.0)
PROMPT = "the cat sat on the"


def lay_out_repo(cache: Path, repo: str, files: dict[str, Path], commit: str) -> Path:
    """A repo in huggingface_hub's cache format: blobs named by their hash, snapshots/<commit>/
    holding relative symlinks to them, refs/main holding the commit. Returns the snapshot folder."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)  # no newline, as the library writes it
    for name, src in files.items():
        blob = root / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
        shutil.copyfile(src, blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, targets, n_vocab) -> Path:
    root = tmp_path_factory.mktemp("hf")
    hf = tm.build_hf_head(root / "checkpoint", tm.HeadSpec("specforge"), n_vocab, seed=7)
    cache = root / "hub"
    lay_out_repo(cache, HEAD_REPO, {"config.json": hf / "config.json", "model.safetensors": hf / "model.safetensors"},
                 "a" * 40)
    lay_out_repo(cache, TARGET_REPO, {"tiny-Q8_0.gguf": targets["llama"]}, "b" * 40)
    return cache


@pytest.fixture()
def offline(hub_cache, tmp_path_factory, monkeypatch) -> Path:
    """HF_HUB_OFFLINE=1, the laid-out hub cache, and a converted-heads cache shared by this module."""
    heads = tmp_path_factory.getbasetemp() / "le3-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv(hub.CACHE_ENV, str(heads))
    return heads


def greedy(llm: llama_cpp.Llama, n: int = 24) -> str:
    return llm.create_completion(PROMPT, max_tokens=n, temperature=0.0)["choices"][0]["text"]


def test_hub_head_drafts_equals_plain_and_converts_once(offline, targets, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))  # an empty converted-heads cache
    monkeypatch.setattr("eagle3_convert.gguf_io.PROGRESS_BYTES", 0)  # a line per tensor, as for a large head
    target = str(targets["llama"])
    before = hub.conversions
    spec = Llama(target, eagle3_head=HEAD_REPO, **KW, **SPEC)
    assert spec.is_speculative and hub.conversions == before + 1
    err = capsys.readouterr().err  # the one-time conversion is announced, with progress
    assert "converting head tiny-org/tiny-eagle3-head" in err and "writing blk.0.ffn_up.weight" in err
    text = greedy(spec)
    assert spec.speculative_stats()["rounds"] > 0
    plain = llama_cpp.Llama(target, flash_attn=True, **KW)
    assert text == greedy(plain)

    converted = list(tmp_path.rglob("*.gguf"))
    assert len(converted) == 1 and converted[0].parent.name.startswith("tiny-org--tiny-eagle3-head--aaaaaaaaaaaa")
    mtime = converted[0].stat().st_mtime_ns
    # the second start (by branch, or pinned to the commit) converts nothing and drafts the same
    for ref in (HEAD_REPO, f"{HEAD_REPO}@{'a' * 40}"):
        again = Llama(target, eagle3_head=ref, **KW, **SPEC)
        assert greedy(again) == text and again.speculative_stats()["rounds"] > 0
    assert hub.conversions == before + 1 and converted[0].stat().st_mtime_ns == mtime
    assert "converting" not in capsys.readouterr().err

    # another target is another key: converted again, beside the first
    other = hub.resolve_head(HEAD_REPO, targets["qwen2"], log=lambda s: None)
    assert other != converted[0] and hub.conversions == before + 2


def test_missing_repo_offline_names_it(offline, targets):
    with pytest.raises(ValueError, match=r"tiny-org/no-such-head.*HF_HUB_OFFLINE") as e:
        Llama(str(targets["llama"]), eagle3_head="tiny-org/no-such-head", **KW)
    assert e.value.__cause__ is None and "Traceback" not in str(e.value)
    with pytest.raises(ValueError, match=r"'tiny-org/tiny-eagle3-head@v2'"):
        hub.resolve_head(f"{HEAD_REPO}@v2", targets["llama"])  # a revision not in the cache
    # a path-like name that does not exist stays a missing-file error
    with pytest.raises(ValueError, match="does not exist: heads/missing.gguf"):
        Llama(str(targets["llama"]), eagle3_head="heads/missing.gguf", **KW)


def test_from_pretrained_passes_the_hub_head(offline, targets):
    llm = Llama.from_pretrained(TARGET_REPO, "*Q8_0.gguf", eagle3_head=HEAD_REPO, **KW, **SPEC)
    assert llm.is_speculative and Path(llm.model_path).name == "tiny-Q8_0.gguf"
    assert greedy(llm) == greedy(llama_cpp.Llama(str(targets["llama"]), flash_attn=True, **KW))


def test_local_checkpoint_directory_converts_once(hub_cache, targets, tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "heads"))
    ckpt = hub_cache.parent / "checkpoint"
    before = hub.conversions
    first = hub.resolve_head(str(ckpt), targets["llama"], log=lambda s: None)
    assert hub.resolve_head(ckpt, targets["llama"], log=lambda s: None) == first and hub.conversions == before + 1
    # the target is known by its content: a copy elsewhere (a re-download, another mtime) hits the cache
    copy = Path(shutil.copyfile(targets["llama"], tmp_path / "renamed.gguf"))
    os.utime(copy, ns=(1, 1))
    assert hub.resolve_head(ckpt, copy, log=lambda s: None) == first and hub.conversions == before + 1
    os.utime(ckpt / "config.json", ns=(1, 1))  # an edited checkpoint is another key
    assert hub.resolve_head(ckpt, targets["llama"], log=lambda s: None) != first and hub.conversions == before + 2


def test_model_ref_parsing(tmp_path):
    assert hub.parse_model_ref("org/repo:Q4_K_M") == ("org/repo", "*[qQ]4_[kK]_[mM].gguf")
    assert hub.parse_model_ref("org/repo") == ("org/repo", "*.gguf")
    assert hub.parse_model_ref("org/repo:model-*.gguf") == ("org/repo", "model-*.gguf")
    assert hub.parse_model_ref("models/x.gguf") is None and hub.parse_model_ref(str(tmp_path)) is None
    assert hub.parse_repo_ref("org/head@abc") == ("org/head", "abc")
    assert hub.parse_repo_ref("./org/head") is None and hub.parse_repo_ref("/abs/head") is None


def test_chat_cli_hub_forms(offline, monkeypatch, capsys):
    from llama_eagle3 import cli

    monkeypatch.setattr(sys, "stdin", io.StringIO("the cat sat\nexit\n"))
    cli.main(["chat", "--model", f"{TARGET_REPO}:Q8_0", "--head", HEAD_REPO, "--threads", "1", "--n-ctx", "256",
              "--max-tokens", "8", "--temperature", "0"])
    assert "mean accepted length" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="llama-eagle3 chat: .*tiny-org/nothing-here"):
        cli.main(["chat", "--model", f"{TARGET_REPO}:Q8_0", "--head", "tiny-org/nothing-here", "--threads", "1"])


@pytest.fixture()
def empty_offline(tmp_path, monkeypatch) -> None:
    """HF_HUB_OFFLINE=1 and an empty hub cache (HF_HOME in tmp_path, no HF_HUB_CACHE)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "heads"))


ISSUE_MODEL, ISSUE_HEAD = "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF", "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"


def test_offline_a_missing_model_is_named_as_the_model(empty_offline, tmp_path):
    """Issue 26: offline with an empty cache, `chat --model org/repo:QUANT --head org/head` said
    "EAGLE-3 head 'bartowski/...': not in the Hugging Face cache" about the model."""
    from llama_eagle3 import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["chat", "--model", f"{ISSUE_MODEL}:Q4_K_M", "--head", ISSUE_HEAD, "--threads", "1"])
    message = str(e.value)
    assert message.startswith(f"llama-eagle3 chat: model {ISSUE_MODEL!r}: not in the Hugging Face cache "
                              f"({tmp_path / 'hf' / 'hub'})"), message
    assert "EAGLE-3 head" not in message and "HF_HUB_OFFLINE is set" in message
    assert "--include '*[qQ]4_[kK]_[mM].gguf'" in message and "pass a local GGUF path" in message
    with pytest.raises(hub.HubModelError, match=rf"^model {ISSUE_MODEL!r}: not in the Hugging Face cache"):
        Llama.from_pretrained(ISSUE_MODEL, "*Q4_K_M.gguf", eagle3_head=ISSUE_HEAD, **KW)


def test_offline_a_missing_head_is_named_as_the_head(empty_offline, targets):
    from llama_eagle3 import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["chat", "--model", str(targets["llama"]), "--head", ISSUE_HEAD, "--threads", "1"])
    message = str(e.value)
    assert message.startswith(f"llama-eagle3 chat: EAGLE-3 head {ISSUE_HEAD!r}: not in the Hugging Face cache"), message
    assert "download the EAGLE-3 head" in message and "pass a local head GGUF" in message


def test_offline_a_cached_model_repo_without_the_quant_says_which_files_it_has(offline):
    with pytest.raises(hub.HubModelError, match=rf"^model {TARGET_REPO!r}: 0 cached files match '\*Q4_K_M.gguf'"):
        Llama.from_pretrained(TARGET_REPO, "*Q4_K_M.gguf", **KW)


def test_server_settings_accept_a_hub_head(offline, targets):
    pytest.importorskip("llama_cpp.server")
    from llama_eagle3.server import Eagle3LlamaProxy, Eagle3ModelSettings

    # the model from the hub too (hf_model_repo_id: the loader calls Llama.from_pretrained)
    settings = Eagle3ModelSettings(model="*Q8_0.gguf", hf_model_repo_id=TARGET_REPO, eagle3_head=HEAD_REPO,
                                   n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False, eagle3_adaptive=False)
    llm = Eagle3LlamaProxy.load_llama_from_model_settings(settings)
    assert isinstance(llm, Llama) and llm.is_speculative
