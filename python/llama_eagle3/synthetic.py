"""Real-size synthetic models for benchmarks (`llama-eagle3 bench --synthetic llama-8b`).

A target GGUF with a published model's shapes (layers, hidden, heads, FFN, vocabulary) and
random quantized weights, and a random EAGLE-3 head of the matching published head's shapes
(one decoder layer, draft vocabulary 32000), converted by this project's converter. Their text
is meaningless, their costs are real: a target decode reads as many bytes and runs the same
kernels as the real model in that quantization, and a head step costs what a real head's does.
Used with simulated acceptance (verifier.SimulatedAcceptance), they answer "how fast would
EAGLE-3 be on this machine with a model of that size". Shapes with a published DFlash head
(DFLASH_SHAPES) also get a random DFlash head of that head's shapes (z-lab layout, converted to
q8_0), benched next to the EAGLE-3 head.

Weights are written as quantized blocks directly: random quants, with the block scales fixed so
that every weight has a standard deviation near 0.02 (the usual initialisation), which keeps
activations finite through every layer. The rows of the special tokens in the output matrix
are zero, so their logit is exactly 0 and greedy decoding never ends a generation early.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

SYNTHETIC_VERSION = 1  # part of the cache key: bump when the files written here change
DRAFT_VOCAB = 32000    # the published Llama-3 and Qwen3 heads' draft vocabulary
QUANTS = ("Q4_0", "Q4_K_M", "Q8_0")
_SPECIALS = ("<|begin_of_text|>", "<|im_start|>", "<|im_end|>")
N_SPECIALS = len(_SPECIALS)  # the last token ids of a synthetic vocabulary
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Shape:
    arch: str          # llama.cpp architecture
    n_layer: int
    hidden: int
    n_head: int
    n_kv: int
    head_dim: int
    ff: int            # target FFN width; the published heads use the same
    vocab: int
    rope_theta: float
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's q and k


# public configs: Llama-3.2-1B/3B-Instruct, Llama-3.1-8B/70B-Instruct, Qwen3-8B
SHAPES: dict[str, Shape] = {
    "llama-1b": Shape("llama", 16, 2048, 32, 8, 64, 8192, 128256, 500000.0),
    "llama-3b": Shape("llama", 28, 3072, 24, 8, 128, 8192, 128256, 500000.0),
    "llama-8b": Shape("llama", 32, 4096, 32, 8, 128, 14336, 128256, 500000.0),
    "qwen3-8b": Shape("qwen3", 36, 4096, 32, 8, 128, 12288, 151936, 1000000.0, qk_norm=True),
    "llama-70b": Shape("llama", 80, 8192, 64, 8, 128, 28672, 128256, 500000.0),
    # tests: the same writer at a size CI runs in seconds
    "tiny": Shape("llama", 8, 256, 4, 2, 64, 512, 1024, 10000.0),
}

# ---- quantized random blocks ------------------------------------------------------------

# bytes per block of 32 (Q4_0, Q8_0) or 256 (K-quants) weights, and where the f16 scales sit
_BLOCK = {"Q4_0": (32, 18), "Q8_0": (32, 34), "Q4_K": (256, 144), "Q6_K": (256, 210)}


def _f16(x: float) -> np.ndarray:
    return np.frombuffer(np.float16(x).tobytes(), np.uint8)


def random_blocks(qtype: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """[rows, bytes per row] uint8: `cols` random weights per row in qtype's block layout, scaled
    so that the dequantized weights have a standard deviation near 0.02 and a mean near 0."""
    per, size = _BLOCK[qtype]
    if cols % per:
        raise ValueError(f"{qtype} needs rows of a multiple of {per} weights, got {cols}")
    b = np.frombuffer(bytearray(rng.bytes(rows * (cols // per) * size)), np.uint8).reshape(rows, cols // per, size)
    if qtype == "Q4_0":      # d, qs[16]: w = d * (q - 8), q uniform 0..15 (sd 4.6)
        b[..., 0:2] = _f16(0.0043)
    elif qtype == "Q8_0":    # d, qs[32] int8: w = d * q (sd 73.6)
        b[..., 0:2] = _f16(0.00027)
    elif qtype == "Q4_K":    # d, dmin, scales[12] (6-bit sc and m), qs[128]: w = d*sc*q - dmin*m
        b[..., 0:2] = _f16(0.0001)   # sd(sc*q) ~ 218 for sc uniform 0..63, q uniform 0..15
        b[..., 2:4] = _f16(0.00075)  # mean(d*sc*q) = 236 d ~ mean(dmin*m) = 31.5 dmin
    elif qtype == "Q6_K":    # ql[128], qh[64], scales[16] int8, d: w = d * scale * (q - 32)
        b[..., 192:208] = rng.integers(-8, 9, size=(rows, cols // per, 16), dtype=np.int8).view(np.uint8)
        b[..., 208:210] = _f16(0.00022)  # sd(scale * (q - 32)) ~ 91
    return b.reshape(rows, -1)


def _tensor_types(shape: Shape, quant: str) -> Callable[[str, int], str]:
    """name, layer -> block type, as llama.cpp's quantizer picks them for quant (Q4_K_M: Q6_K for
    attn_v and ffn_down in the first and last eighth of the layers and every third one between;
    the output matrix Q6_K except in Q8_0 files)."""
    n = shape.n_layer

    def more_bits(i: int) -> bool:
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    def pick(name: str, layer: int) -> str:
        if name == "output":
            return "Q8_0" if quant == "Q8_0" else "Q6_K"
        if quant == "Q4_K_M":
            return "Q6_K" if name in ("attn_v", "ffn_down") and more_bits(layer) else "Q4_K"
        return quant
    return pick


# ---- the target --------------------------------------------------------------------------

def byte_tokens() -> list[str]:
    """The 256 byte tokens of a GPT-2 style byte-level BPE vocabulary, in byte order: printable
    bytes stand for themselves, the others for chr(256 + k) in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    tokens, extra = [], 0
    for byte in range(256):
        if byte in printable:
            tokens.append(chr(byte))
        else:
            tokens.append(chr(256 + extra))
            extra += 1
    return tokens


def synthetic_tokenizer(vocab: int) -> dict:
    """A byte-level BPE vocabulary of `vocab` entries: 256 bytes, placeholder tokens, chat specials."""
    n_fill = vocab - 256 - len(_SPECIALS)
    tokens = byte_tokens() + [f"<t{i}>" for i in range(n_fill)] + list(_SPECIALS)
    types = [1] * (vocab - len(_SPECIALS)) + [3] * len(_SPECIALS)
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": ["Ġ t", "h e"],
            "tokenizer.ggml.bos_token_id": vocab - 3, "tokenizer.ggml.eos_token_id": vocab - 1,
            "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": _CHAT_TEMPLATE}


def write_target(path: Path, shape: Shape, quant: str, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """Writes the random target GGUF tensor by tensor (memory: one tensor at a time)."""
    import gguf

    from eagle3_convert.gguf_io import write_kv

    if quant not in QUANTS:
        raise ValueError(f"synthetic targets come in {', '.join(QUANTS)}, got {quant!r}")
    rng = np.random.default_rng(seed)
    s, a = shape, shape.arch
    w = gguf.GGUFWriter(str(path), a)
    for k, v in {"context_length": 8192, "embedding_length": s.hidden, "block_count": s.n_layer,
                 "feed_forward_length": s.ff, "attention.head_count": s.n_head, "attention.head_count_kv": s.n_kv,
                 "rope.dimension_count": s.head_dim, "attention.key_length": s.head_dim,
                 "attention.value_length": s.head_dim, "attention.layer_norm_rms_epsilon": 1e-5,
                 "rope.freq_base": s.rope_theta, "vocab_size": s.vocab}.items():
        write_kv(w, f"{a}.{k}", v)
    write_kv(w, "general.name", f"synthetic {a} (random weights)")
    for k, v in synthetic_tokenizer(s.vocab).items():
        write_kv(w, k, v)
    q, kv = s.n_head * s.head_dim, s.n_kv * s.head_dim
    layer = [("attn_norm", None), ("attn_q", (q, s.hidden)), ("attn_k", (kv, s.hidden)), ("attn_v", (kv, s.hidden)),
             ("attn_output", (s.hidden, q)), ("ffn_norm", None), ("ffn_gate", (s.ff, s.hidden)),
             ("ffn_up", (s.ff, s.hidden)), ("ffn_down", (s.hidden, s.ff))]
    plan: list[tuple[str, int, Optional[tuple[int, int]], int]] = [  # (name, layer, [rows, cols] or None, width)
        ("token_embd", -1, (s.vocab, s.hidden), 0), ("output_norm", -1, None, s.hidden),
        ("output", -1, (s.vocab, s.hidden), 0)]
    for i in range(s.n_layer):
        plan += [(n, i, rc, s.hidden) for n, rc in layer]
        if s.qk_norm:
            plan += [("attn_q_norm", i, None, s.head_dim), ("attn_k_norm", i, None, s.head_dim)]
    types = _tensor_types(s, quant)

    def full_name(name: str, i: int) -> str:
        return f"blk.{i}.{name}.weight" if i >= 0 else f"{name}.weight"

    for name, i, rc, width in plan:
        if rc is None:
            w.add_tensor_info(full_name(name, i), (width,), np.dtype(np.float32), 4 * width)
        else:
            t = gguf.GGMLQuantizationType[types(name, i)]
            per, size = gguf.GGML_QUANT_SIZES[t]
            nbytes = rc[0] * rc[1] // per * size
            w.add_tensor_info(full_name(name, i), (rc[0], rc[1] // per * size), np.dtype(np.uint8), nbytes, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for j, (name, i, rc, width) in enumerate(plan):
        if rc is None:
            w.write_tensor_data(np.ones(width, np.float32))
            continue
        blocks = random_blocks(types(name, i), rc[0], rc[1], rng)
        if name == "output":
            blocks[s.vocab - len(_SPECIALS):] = 0  # special tokens: logit exactly 0, never the argmax
        w.write_tensor_data(blocks)
        if j % 36 == 0:
            log(f"  {path.name}: tensor {j + 1}/{len(plan)}")
    w.close()
    return path


# ---- the head ----------------------------------------------------------------------------

def write_head(out: Path, target: Path, shape: Shape, seed: int = 1, log: Callable[[str], None] = print) -> Path:
    """A random head of the published shape for `shape` (hidden, heads, FFN of the target; draft
    vocabulary 32000 without the special tokens), written as a SpecForge checkpoint and converted
    (q8_0) against `target` by the converter users run."""
    from eagle3_convert.cli import convert
    from eagle3_convert.random_head import write_random_head

    hf = out.with_suffix(".hf")
    n_normal = shape.vocab - len(_SPECIALS)
    ids = np.sort(np.random.default_rng(seed).choice(n_normal, min(DRAFT_VOCAB, n_normal), replace=False))
    write_random_head(hf, shape.hidden, shape.n_head, shape.n_kv, shape.ff, shape.vocab, len(ids),
                      rope_theta=shape.rope_theta, seed=seed, draft_ids=ids)
    try:
        convert(hf, str(target), out, "q8_0", log=log)
    finally:
        shutil.rmtree(hf, ignore_errors=True)
    return out


def _dflash_shapes() -> dict:
    """shape name -> the published DFlash head's shapes (random_dflash.DFlashShape)."""
    from eagle3_convert.random_dflash import QWEN3_8B_DFLASH, DFlashShape

    tiny = SHAPES["tiny"]
    return {"qwen3-8b": QWEN3_8B_DFLASH,  # z-lab/Qwen3-8B-DFlash-b16
            "tiny": DFlashShape(hidden=tiny.hidden, n_layers=2, n_head=tiny.n_head, n_kv_head=tiny.n_kv,
                                head_dim=tiny.head_dim, intermediate=tiny.ff, vocab=tiny.vocab,
                                target_layer_ids=(0, 3, 5), num_target_layers=tiny.n_layer, block_size=16,
                                mask_token_id=tiny.vocab - 1, rope_theta=tiny.rope_theta)}


def write_dflash_head(out: Path, target: Path, name: str, seed: int = 2, log: Callable[[str], None] = print) -> Path:
    """A random DFlash head of the published head's shapes for the shape `name`, written as a z-lab
    checkpoint (bf16, streamed) and converted (q8_0) against `target` by the converter users run."""
    from eagle3_convert.cli import convert
    from eagle3_convert.random_dflash import write_random_dflash_head

    hf = out.with_suffix(".hf")
    write_random_dflash_head(hf, _dflash_shapes()[name], "bf16", seed)
    try:
        convert(hf, str(target), out, "q8_0", log=log)
    finally:
        shutil.rmtree(hf, ignore_errors=True)
    return out


@dataclass(frozen=True)
class SyntheticFiles:
    target: Path
    head: Path                # EAGLE-3
    dflash: Optional[Path]    # None: no DFlash head is published at this shape


def default_cache() -> Path:
    return Path.home() / ".cache" / "llama-eagle3" / "synthetic"


def write_once(done: Path, write: Callable[[], object], record: dict) -> None:
    """Runs write() unless the marker `done` exists, then writes it (record as JSON): files in the
    cache are complete only once their marker exists, so an interrupted write is redone."""
    if done.is_file():
        return
    done.parent.mkdir(parents=True, exist_ok=True)
    write()
    done.write_text(json.dumps(record))


def ensure(name: str, quant: str = "Q4_K_M", cache: Optional[Path] = None,
           log: Callable[[str], None] = print) -> SyntheticFiles:
    """The target, EAGLE-3 head and (where published at this shape) DFlash head GGUFs for the shape
    `name`, written once into the cache: a folder per shape, quantization and writer version; the
    target and EAGLE-3 head are complete once `done.json` exists, the DFlash head once
    `dflash.done` does."""
    if name not in SHAPES:
        raise ValueError(f"unknown synthetic shape {name!r}; choose from {', '.join(SHAPES)}")
    if quant not in QUANTS:
        raise ValueError(f"synthetic targets come in {', '.join(QUANTS)}, got {quant!r}")
    shape = SHAPES[name]
    folder = (cache or default_cache()) / f"{name}-{quant}-v{SYNTHETIC_VERSION}"
    target, head, done = folder / "target.gguf", folder / "head.gguf", folder / "done.json"

    def target_and_head() -> None:
        log(f"writing the synthetic {name} target ({quant}) and head into {folder} (once)")
        write_target(target, shape, quant, log=log)
        write_head(head, target, shape, log=log)
    write_once(done, target_and_head, {"shape": asdict(shape), "quant": quant, "version": SYNTHETIC_VERSION})
    if name not in _dflash_shapes():
        return SyntheticFiles(target, head, None)
    dflash = folder / "dflash.gguf"

    def dflash_head() -> None:
        log(f"writing the synthetic {name} DFlash head into {folder} (once)")
        write_dflash_head(dflash, target, name, log=log)
    write_once(folder / "dflash.done", dflash_head, asdict(_dflash_shapes()[name]))
    return SyntheticFiles(target, head, dflash)
