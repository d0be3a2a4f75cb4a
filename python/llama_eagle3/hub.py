"""EAGLE-3 heads named by a Hugging Face hub repo id: downloaded, converted once, cached.

    resolve_head("org/head-repo[@revision]", target_gguf) -> a head GGUF path

What `eagle3_head` may be, in this order (a local path always wins):
  1. an existing file: a head GGUF, used as is;
  2. an existing directory: an HF head checkpoint (config.json + safetensors/.bin), converted;
  3. "org/name" or "org/name@revision": the head's files are fetched with huggingface_hub
     (`snapshot_download`: its cache, its progress bars, HF_HUB_OFFLINE, HF_HUB_CACHE/HF_HOME,
     tokens), then converted.

A conversion runs `eagle3_convert.cli.convert` against the target GGUF (outtype f16: see
HEAD_OUTTYPE) and lands in `heads_cache()`, by default ~/.cache/llama-eagle3/heads
(LLAMA_EAGLE3_CACHE overrides the root). The cache key is

    (head source, target identity, converter version, outtype)
    head source      hub: repo id + the commit hash of the snapshot (never a branch name, so a
                     moved branch converts again); a local directory: its absolute path + the
                     size, mtime and name of every file in it
    target identity  the GGUF's size + sha256 of its first 8 MiB and last 1 MiB (the header,
                     tokenizer and tensor infos, and the tail of the tensor data): content, not
                     path or mtime, so a re-downloaded or copied target still hits
    converter        llama-eagle3's version + a hash of eagle3_convert's source files

Errors name what the repo was wanted for: "EAGLE-3 head 'org/name': ..." (HubHeadError) for a
head, "model 'org/name': ..." (HubModelError) for the target that Llama.from_pretrained / --model
org/repo:QUANT names (cached_repo_file); both are HubError, a ValueError.

Invariants: a file in the cache is complete and passed the converter's read-back check (it is
written under a temporary name and renamed into place only after `convert` returned); the
second start with the same key converts nothing and touches no network beyond what
huggingface_hub does to resolve a branch (none when offline).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import sys
import time
from importlib import metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

HEAD_OUTTYPE = "f16"
"""Why f16 and not q8_0: published heads are bf16/fp16, so f16 keeps them at the checkpoint's own
precision (the read-back check holds it to 1e-2 of the checkpoint, q8_0 only to 5e-2), and a head
that drafts worse than its checkpoint is invisible to the user (output stays lossless, only
acceptance drops). The head is small next to its target (an 8B-class head is about 0.8 GB at f16
beside a 4.9 GB Q4_K_M target); who wants q8_0 converts once with convert-eagle3-gguf --outtype q8_0
and passes the file."""

CACHE_ENV = "LLAMA_EAGLE3_CACHE"
HEAD_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json"]
BIN_PATTERNS = ["config.json", "*.bin", "*.bin.index.json"]
BIN_IGNORE = ["training_args.bin", "optimizer*.bin", "scheduler*.bin", "rng_state*"]
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}

conversions = 0  # conversions this process ran (tests: a second start must not add one)

Log = Callable[[str], None]


class HubError(ValueError):
    """A hub repo that cannot be had: the message names what it was for (the model or the EAGLE-3
    head), the repo, and what to do."""


class HubHeadError(HubError):
    """The EAGLE-3 head (eagle3_head, --head) named by a hub repo id cannot be had."""


class HubModelError(HubError):
    """The target model (Llama.from_pretrained, --model org/repo:QUANT) cannot be had."""


@dataclass(frozen=True)
class _Wanted:
    """What a hub repo is fetched for, as its error messages name it."""
    noun: str                # starts each message: "<noun> 'org/name': ..."
    local: str               # the local alternative a message offers
    error: type[HubError]


HEAD = _Wanted("EAGLE-3 head", "pass a local head GGUF / checkpoint directory as eagle3_head (--head)", HubHeadError)
MODEL = _Wanted("model", "pass a local GGUF path as model_path (--model)", HubModelError)


def stderr_log(message: str) -> None:
    print(f"llama-eagle3: {message}", file=sys.stderr, flush=True)


# ---- names ----------------------------------------------------------------------------------

def parse_repo_ref(ref: str) -> Optional[tuple[str, Optional[str]]]:
    """("org/name", revision or None) if ref reads as a hub repo id, else None. Strings that look
    like paths (more than one "/", a leading ".", "~" or "/", a .gguf suffix) are never repo ids."""
    repo, _, revision = ref.partition("@")
    if not _REPO_RE.match(repo) or repo.endswith(".gguf") or ".." in repo or (ref.count("@") > 1):
        return None
    return repo, (revision or None)


def parse_model_ref(ref: str) -> Optional[tuple[str, str]]:
    """`--model org/repo:QUANT` -> ("org/repo", filename glob) for Llama.from_pretrained; None for a
    local path. QUANT becomes "*QUANT.gguf" matched case-insensitively (Q4_K_M finds
    model-q4_k_m.gguf); a QUANT with a "*" or ending in .gguf is used as the glob itself; no QUANT:
    "*.gguf" (a repo holding one GGUF)."""
    if Path(ref).expanduser().exists():
        return None
    repo, _, quant = ref.partition(":")
    if parse_repo_ref(repo) is None:
        return None
    if not quant:
        return repo, "*.gguf"
    if "*" in quant or quant.lower().endswith(".gguf"):
        return repo, quant
    nocase = "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in quant)
    return repo, f"*{nocase}.gguf"


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but read now (the library reads it at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def hf_cache_dir() -> Optional[str]:
    """The hub cache huggingface_hub would use, from the environment as it is now (the library
    fixes it at import): HF_HUB_CACHE, then HF_HOME/hub; None: the library's default."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(key):
            return os.path.expanduser(os.environ[key])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def heads_cache() -> Path:
    """Where converted heads live: $LLAMA_EAGLE3_CACHE/heads, else ~/.cache/llama-eagle3/heads
    (XDG_CACHE_HOME honoured)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "heads"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "llama-eagle3" / "heads"


# ---- download --------------------------------------------------------------------------------

def _import_hub(wanted: _Wanted):
    try:
        import huggingface_hub
    except ImportError:
        raise wanted.error(f"a hub {wanted.noun} needs huggingface_hub: pip install 'huggingface-hub>=0.23'") from None
    return huggingface_hub


def _explain(wanted: _Wanted, repo: str, revision: Optional[str], no_network: bool, e: Exception,
             include: Optional[str] = None) -> HubError:
    """One message naming what the repo was for, the repo, what went wrong and what to do, for a
    huggingface_hub error. include: the file pattern a download of the repo needs (the model's)."""
    name = type(e).__name__
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    at = f"{repo}@{revision}" if revision else repo
    noun, error = wanted.noun, wanted.error
    fetch = f"hf download {repo}" + (f" --include '{include}'" if include else "")
    if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "IncompleteSnapshotError") or no_network:
        how = (f"HF_HUB_OFFLINE is set (or local_files_only): unset it for one run to download the {noun}, or "
               f"fetch it first with `{fetch}` (older huggingface_hub: `huggingface-cli download`)"
               if no_network else
               f"Check your connection, or fetch it elsewhere with `{fetch}` and copy the cache")
        return error(f"{noun} {at!r}: not in the Hugging Face cache ({hf_cache_dir() or 'default'}) and the hub "
                     f"cannot be reached. {how}; or {wanted.local}. ({name}: {first})")
    if name == "GatedRepoError":
        return error(f"{noun} {at!r} is gated: accept its terms on https://huggingface.co/{repo} "
                     f"and log in (`hf auth login` or HF_TOKEN)")
    if name == "RevisionNotFoundError":
        return error(f"{noun} {repo!r} has no revision {revision!r}")
    if name in ("RepositoryNotFoundError", "HFValidationError"):
        return error(f"{noun} {at!r}: no such repository on the Hugging Face hub (nor a local file "
                     f"or directory of that name); a private repo needs `hf auth login` or HF_TOKEN")
    return error(f"{noun} {at!r}: download failed ({name}: {first})")


def download_head(repo: str, revision: Optional[str] = None, local_files_only: bool = False) -> Path:
    """The snapshot directory of the head's config.json and weights in the hub cache (downloaded
    if needed: safetensors, else the .bin files). Offline (HF_HUB_OFFLINE or local_files_only) it
    only reads the cache. Raises HubHeadError."""
    hub = _import_hub(HEAD)
    no_network = local_files_only or offline()
    kwargs = dict(repo_id=repo, revision=revision, cache_dir=hf_cache_dir(), local_files_only=no_network)
    try:
        folder = Path(hub.snapshot_download(allow_patterns=HEAD_PATTERNS, **kwargs))
        if not any(folder.glob("*.safetensors")):
            folder = Path(hub.snapshot_download(allow_patterns=BIN_PATTERNS, ignore_patterns=BIN_IGNORE, **kwargs))
    except Exception as e:  # huggingface_hub's errors, network errors: one clear line
        raise _explain(HEAD, repo, revision, no_network, e) from None
    if not (folder / "config.json").is_file():
        raise HubHeadError(f"EAGLE-3 head {repo!r}: the repository has no config.json (is it an HF EAGLE-3 head? "
                           f"a GGUF head: download it and pass its path)")
    return folder


def cached_repo_file(repo: str, pattern: str, cache_dir: Optional[str] = None) -> Path:
    """The one cached file of the model repo matching the glob pattern, without network
    (Llama.from_pretrained offline: llama-cpp-python's lists the repo online first). Raises
    HubModelError."""
    hub = _import_hub(MODEL)
    try:
        folder = Path(hub.snapshot_download(repo_id=repo, allow_patterns=[pattern], local_files_only=True,
                                            cache_dir=cache_dir or hf_cache_dir()))
    except Exception as e:
        raise _explain(MODEL, repo, None, True, e, include=pattern) from None
    found = sorted(p for p in folder.rglob("*") if fnmatch.fnmatch(p.relative_to(folder).as_posix(), pattern))
    if len(found) != 1:
        raise HubModelError(f"model {repo!r}: {len(found)} cached files match {pattern!r} "
                            f"({', '.join(p.name for p in found) or 'none'}); offline (HF_HUB_OFFLINE), exactly "
                            f"one must: fetch it with `hf download {repo} --include '{pattern}'`, or {MODEL.local}")
    return found[0]


# ---- the cache key ---------------------------------------------------------------------------

def target_identity(target: Union[str, Path], head_mib: int = 8, tail_mib: int = 1) -> str:
    """sha256 of the target GGUF's size, first head_mib MiB and last tail_mib MiB."""
    p = Path(target)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        h.update(f.read(head_mib << 20))
        if size > (head_mib << 20):
            f.seek(max(head_mib << 20, size - (tail_mib << 20)))
            h.update(f.read())
    return h.hexdigest()[:24]


def converter_version() -> str:
    """llama-eagle3's version + sha256 of eagle3_convert's *.py (a converter edit re-converts)."""
    import eagle3_convert

    try:
        version = metadata.version("llama-eagle3")
    except metadata.PackageNotFoundError:
        version = "unknown"
    h = hashlib.sha256()
    for f in sorted(Path(eagle3_convert.__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return f"{version}+{h.hexdigest()[:12]}"


def _dir_identity(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_path(source: str, label: str, target: Union[str, Path], outtype: str = HEAD_OUTTYPE) -> tuple[Path, dict]:
    """(converted head path, its key) for a head source (see the module doc) under heads_cache()/label."""
    key = {"head": source, "target": target_identity(target), "converter": converter_version(), "outtype": outtype}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", label).strip("-") or "head"
    return heads_cache() / safe / f"{digest}.{outtype}.gguf", key


# ---- conversion ------------------------------------------------------------------------------

def convert_cached(checkpoint: Path, source: str, label: str, target: Union[str, Path],
                   outtype: str = HEAD_OUTTYPE, log: Log = stderr_log) -> Path:
    """The converted head for (source, target, converter, outtype): from the cache, or converted now
    (the converter's lines go to log with the elapsed time) and moved into the cache."""
    global conversions
    out, key = cache_path(source, label, target, outtype)
    if out.is_file():
        return out
    from eagle3_convert.cli import convert
    from eagle3_convert.errors import ConversionError

    out.parent.mkdir(parents=True, exist_ok=True)
    size = sum(f.stat().st_size for f in Path(checkpoint).glob("*") if f.suffix in (".safetensors", ".bin"))
    log(f"converting head {label} ({size / 1e9:.2f} GB of weights) against {Path(target).name} "
        f"to {outtype}: once, cached as {out}")
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}.gguf")
    t0 = time.perf_counter()
    try:
        convert(Path(checkpoint), str(target), tmp, outtype, log=lambda s: log(f"[{time.perf_counter() - t0:5.1f} s] {s}"))
        os.replace(tmp, out)
    except ConversionError as e:
        raise HubHeadError(f"EAGLE-3 head {label} cannot be converted for {Path(target).name}: {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    conversions += 1
    out.with_suffix(".json").write_text(json.dumps({**key, "label": label, "checkpoint": str(checkpoint)}, indent=1))
    log(f"converted in {time.perf_counter() - t0:.1f} s")
    return out


def resolve_head(head: Union[str, Path], target: Union[str, Path], local_files_only: bool = False,
                 outtype: str = HEAD_OUTTYPE, log: Log = stderr_log) -> Path:
    """A head GGUF for `head` (a GGUF path, an HF checkpoint directory, or "org/name[@revision]")
    against the target GGUF `target`; see the module doc. Raises HubHeadError (a ValueError) with
    a message naming the head and what to do, or ValueError for a missing local path."""
    p = Path(head).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ValueError(f"EAGLE-3 head {p} is a directory without config.json (expected an HF head "
                             f"checkpoint, or pass a head GGUF)")
        return convert_cached(p, f"dir:{p.resolve()}:{_dir_identity(p)}", p.resolve().name, target, outtype, log)
    ref = parse_repo_ref(str(head)) if isinstance(head, str) else None
    if ref is None:
        raise ValueError(f"EAGLE-3 head does not exist: {head} (a head GGUF, an HF head directory, or a hub repo "
                         f"id org/name[@revision])")
    repo, revision = ref
    folder = download_head(repo, revision, local_files_only)
    commit = folder.name  # snapshots/<commit hash>: the resolved revision
    return convert_cached(folder, f"hub:{repo}@{commit}", f"{repo}/{commit[:12]}", target, outtype, log)
