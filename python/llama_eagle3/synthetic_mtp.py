"""Synthetic targets that carry their own drafter: GLM-4.5-style (llama.cpp arch `glm4moe`) GGUFs
with one NextN (MTP) layer, the simplest architecture llama.cpp drafts MTP with (plain attention
KV, nothing recurrent; its trunk layers may all be dense, only the NextN layer must be MoE).

Layout (llama.cpp's glm4moe loader): block_count = n_layer trunk layers + 1, nextn_predict_layers 1;
blocks 0..n_layer-1 are the trunk (the first `n_dense_lead` with a dense FFN, the rest MoE),
block n_layer is the NextN layer: the usual attention and MoE tensors plus `nextn.eh_proj`
[2H -> H], `nextn.enorm`, `nextn.hnorm`, `nextn.shared_head_norm` (its token embedding and
output matrix are the target's).

Two writers:
  write_tiny_mtp_target  a test model (hidden 64) whose greedy text follows a fixed permutation
      of the vocabulary (token x is followed by perm(x)) up to the trunk's context-dependent
      noise, and whose NextN layer predicts that permutation too: its drafts are often, not
      always, right, so rounds accept and reject at every position.
  write_mtp_target       random quantized blocks at a published shape (bench --synthetic
      glm-4.5-air-mtp), its costs real, its text meaningless (see synthetic.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from .synthetic import N_SPECIALS, default_cache, random_blocks, synthetic_tokenizer, write_once

ARCH = "glm4moe"


@dataclass(frozen=True)
class MtpShape:
    n_layer: int        # trunk layers (the GGUF's block_count is n_layer + 1)
    hidden: int
    n_head: int
    n_kv: int
    head_dim: int
    ff: int             # dense FFN width
    n_dense_lead: int   # trunk layers with a dense FFN (GLM-4.5: 1, the rest MoE)
    n_expert: int
    n_expert_used: int
    expert_ff: int
    vocab: int
    rope_theta: float
    rope_dim: int       # rotary dimensions per head (GLM-4.5: half the head)


# GLM-4.5-Air's published config (106B-A12B: 46 layers + 1 NextN, hidden 4096, 96 heads of 128, 8 KV
# heads, layer 0 dense (10944), then 128 experts of 1408 with 8 used and 1 shared, vocabulary
# 151552) with 8 experts per layer instead of 128, all 8 used: a token reads and computes as much
# as one of Air's (8 routed + 1 shared expert, the same attention and vocabulary), and the file is
# 8 GB at Q4_0 instead of 62 (llama.cpp's CPU backend repacks Q4_0 weights into memory of its own,
# and the bench holds a plain and a speculative instance: 2 x 8 GB of RAM). A verify batch of n
# rows reads the same 8 experts, where Air's reads up to 8n: where T(n) follows the bytes read
# (GPUs, Apple Silicon) it is understated for n > 1; a compute-bound CPU computes every (row,
# expert) pair either way.
GLM45_AIR_LIKE = MtpShape(46, 4096, 96, 8, 128, 10944, 1, 8, 8, 1408, 151552, 1000000.0, 64)
TINY = MtpShape(4, 64, 4, 2, 16, 128, 4, 4, 2, 32, 320, 10000.0, 16)
# bench --synthetic NAME (the target drafts with its own NextN layer: eagle3_head="mtp")
MTP_SHAPES: dict[str, MtpShape] = {"glm-4.5-air-mtp": GLM45_AIR_LIKE, "tiny-mtp": TINY}
MTP_QUANTS = ("Q4_0", "Q8_0")
SYNTHETIC_MTP_VERSION = 2  # part of the cache key: bump when the files written here change


def _keys(s: MtpShape) -> dict:
    return {"context_length": 4096, "embedding_length": s.hidden, "block_count": s.n_layer + 1,
            "feed_forward_length": s.ff, "attention.head_count": s.n_head, "attention.head_count_kv": s.n_kv,
            "attention.key_length": s.head_dim, "attention.value_length": s.head_dim,
            "rope.dimension_count": s.rope_dim, "rope.freq_base": s.rope_theta,
            "attention.layer_norm_rms_epsilon": 1e-5, "vocab_size": s.vocab, "nextn_predict_layers": 1,
            "leading_dense_block_count": s.n_dense_lead, "expert_count": s.n_expert,
            "expert_used_count": s.n_expert_used, "expert_shared_count": 1, "expert_feed_forward_length": s.expert_ff,
            "expert_weights_norm": True, "expert_weights_scale": 1.0, "expert_gating_func": 2}  # 2: sigmoid


def tensor_plan(s: MtpShape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, numpy shape) of every tensor: vectors (1 dim) are f32 norms and biases, the rest
    matrices [..., rows, cols] applied to vectors of `cols`."""
    H, q, kv = s.hidden, s.n_head * s.head_dim, s.n_kv * s.head_dim
    yield "token_embd.weight", (s.vocab, H)
    yield "output_norm.weight", (H,)
    yield "output.weight", (s.vocab, H)
    for i in range(s.n_layer + 1):
        b = f"blk.{i}."
        yield b + "attn_norm.weight", (H,)
        yield b + "attn_q.weight", (q, H)
        yield b + "attn_k.weight", (kv, H)
        yield b + "attn_v.weight", (kv, H)
        yield b + "attn_output.weight", (H, q)
        yield b + "post_attention_norm.weight", (H,)
        if i < min(s.n_dense_lead, s.n_layer):
            yield b + "ffn_gate.weight", (s.ff, H)
            yield b + "ffn_up.weight", (s.ff, H)
            yield b + "ffn_down.weight", (H, s.ff)
            continue
        E, F = s.n_expert, s.expert_ff
        yield b + "ffn_gate_inp.weight", (E, H)
        yield b + "exp_probs_b.bias", (E,)
        yield b + "ffn_gate_exps.weight", (E, F, H)
        yield b + "ffn_up_exps.weight", (E, F, H)
        yield b + "ffn_down_exps.weight", (E, H, F)
        yield b + "ffn_gate_shexp.weight", (F, H)
        yield b + "ffn_up_shexp.weight", (F, H)
        yield b + "ffn_down_shexp.weight", (H, F)
        if i == s.n_layer:
            yield b + "nextn.eh_proj.weight", (H, 2 * H)
            yield b + "nextn.enorm.weight", (H,)
            yield b + "nextn.hnorm.weight", (H,)
            yield b + "nextn.shared_head_norm.weight", (H,)


def _start(path: Path, s: MtpShape, name: str, split_max_tensors: int = 0):
    import gguf

    from eagle3_convert.gguf_io import write_kv

    w = gguf.GGUFWriter(str(path), ARCH, split_max_tensors=split_max_tensors)
    for k, v in _keys(s).items():
        write_kv(w, f"{ARCH}.{k}", v)
    write_kv(w, "general.name", name)
    for k, v in synthetic_tokenizer(s.vocab).items():
        write_kv(w, k, v)
    return w


def write_tiny_mtp_target(path: Path, seed: int = 0, noise: float = 1.5, shape: MtpShape = TINY,
                          split_max_tensors: int = 0) -> Path:
    """The test model (module docstring), Q8_0 matrices. `noise` scales the trunk's attention and
    FFN outputs: the larger, the more the target's next token depends on context beyond the last
    token, and the less often the NextN layer (which sees the last token and one state) agrees.
    split_max_tensors > 0 writes a split GGUF (<stem>-00001-of-0000N.gguf, ...) of that many
    tensors per file; the first file's path is returned."""
    import gguf

    s = shape
    rng = np.random.default_rng(seed)
    H = s.hidden
    embd = rng.standard_normal((s.vocab, H)).astype(np.float32)
    perm = rng.permutation(s.vocab - N_SPECIALS)  # token x is followed by perm[x]
    output = np.zeros((s.vocab, H), np.float32)   # special tokens' rows 0: never the argmax
    output[perm] = embd[: s.vocab - N_SPECIALS]   # logit of perm[x] peaks at the state norm(embd[x])
    output *= 2.0 / np.sqrt(H)

    def matrix(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name == "token_embd.weight":
            return embd
        if name == "output.weight":
            return output
        scale = noise if any(k in name for k in ("attn_output", "ffn_down")) else 1.0
        a = rng.standard_normal(shape) * scale / np.sqrt(shape[-1])
        if name.endswith("nextn.eh_proj.weight"):  # mostly the token's embedding half
            a = 0.3 * a + np.hstack([np.eye(H), np.zeros((H, H))])
        return a.astype(np.float32)

    w = _start(path, s, "tiny synthetic glm4moe with a NextN layer (random weights)", split_max_tensors)
    for name, shp in tensor_plan(s):
        if len(shp) == 1:
            v = np.zeros(shp, np.float32) if name.endswith(".bias") else np.ones(shp, np.float32)
            w.add_tensor(name, v)
        elif name == "token_embd.weight":
            w.add_tensor(name, embd)
        else:
            w.add_tensor(name, gguf.quants.quantize(matrix(name, shp), gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path if not split_max_tensors else sorted(path.parent.glob(f"{path.stem}-00001-of-*.gguf"))[0]


def write_mtp_target(path: Path, s: MtpShape, quant: str, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """Random quantized blocks of `quant` (Q4_0 or Q8_0) at shape s, tensor by tensor (memory:
    one tensor at a time); the output matrix Q8_0, the special tokens' rows zero."""
    import gguf

    if quant not in MTP_QUANTS:
        raise ValueError(f"synthetic MTP targets come in {' or '.join(MTP_QUANTS)}, got {quant!r}")
    rng = np.random.default_rng(seed)
    w = _start(path, s, f"synthetic {ARCH} with a NextN layer (random weights)")
    plan = list(tensor_plan(s))

    def qtype(name: str) -> str:
        return "Q8_0" if name in ("output.weight", "token_embd.weight") else quant

    for name, shp in plan:
        if len(shp) == 1:
            w.add_tensor_info(name, shp, np.dtype(np.float32), 4 * shp[0])
            continue
        t = gguf.GGMLQuantizationType[qtype(name)]
        per, size = gguf.GGML_QUANT_SIZES[t]
        byte_shape = (*shp[:-1], shp[-1] // per * size)
        w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for j, (name, shp) in enumerate(plan):
        if len(shp) == 1:
            w.write_tensor_data(np.zeros(shp, np.float32) if name.endswith(".bias") else np.ones(shp, np.float32))
            continue
        rows = int(np.prod(shp[:-1]))
        blocks = random_blocks(qtype(name), rows, shp[-1], rng)
        if name == "output.weight":
            blocks[s.vocab - N_SPECIALS:] = 0
        w.write_tensor_data(blocks)
        if j % 40 == 0:
            log(f"  {path.name}: tensor {j + 1}/{len(plan)}")
    w.close()
    return path


def ensure_mtp(name: str, quant: str = "Q4_0", cache: Optional[Path] = None,
               log: Callable[[str], None] = print) -> Path:
    """The target GGUF of MTP shape `name` (its drafter is inside), written once into the cache as
    synthetic.ensure writes its models: complete only once `done.json` exists."""
    if name not in MTP_SHAPES:
        raise ValueError(f"unknown synthetic MTP shape {name!r}; choose from {', '.join(MTP_SHAPES)}")
    if quant not in MTP_QUANTS:
        raise ValueError(f"synthetic MTP targets come in {' or '.join(MTP_QUANTS)}, got {quant!r}")
    shape = MTP_SHAPES[name]
    folder = (cache or default_cache()) / f"{name}-{quant}-v{SYNTHETIC_MTP_VERSION}"
    target, done = folder / "target.gguf", folder / "done.json"

    def write() -> None:
        log(f"writing the synthetic {name} target ({quant}, with its NextN layer) into {folder} (once)")
        write_mtp_target(target, shape, quant, log=log)
    write_once(done, write, {"shape": asdict(shape), "quant": quant, "version": SYNTHETIC_MTP_VERSION})
    return target
