"""`llama-eagle3 train`: every stage, each resumable from its files in the output directory.

    out/prompts.jsonl      conversations to answer (the user's, or written by the target)
    out/samples.jsonl      {"i", "prompt": ids, "response": ids}: the target's own answers
    out/features/          fp16 shards of the three target states, captured while it answers (features.py)
    out/vocab.npz          d2t (draft -> absolute target id) and the response token counts
    out/checkpoints/       training state (trainer.py)
    out/config.json, out/model.safetensors   the head, SpecForge layout (vLLM / SGLang load it)
    out/head.gguf          the head for llama.cpp / llama_eagle3
    out/report.json, out/report.png
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from .._native import llama_cpp
from .distill import BatchedGenerator
from ..capture import FeatureCapture
from .features import ShardWriter, read_shards
from .prompts import Messages, clean_request, load_prompts, request_writing_prompts
from .vocab import build_draft_vocab, coverage

if TYPE_CHECKING:
    from .trainer import TrainConfig


@dataclass
class DataConfig:
    n_prompts: int = 800           # self-written requests when no prompt file is given
    max_new_tokens: int = 192      # response length cap
    max_prompt_tokens: int = 256
    n_seq: int = 32                # sequences per batched decode (2 cores: 16 / 32 / 48 -> 86 / 99 / 105 tokens/s)
    draft_vocab: int = 8192
    top_k: int = 16                # the target's most likely next tokens kept per position (soft labels)
    layer_ids: Optional[list[int]] = None  # llama.cpp "input of layer" ids; default [2, N//2, N-3]
    seed: int = 0
    threads: int = 2
    n_gpu_layers: int = 0          # target layers offloaded while answering and in the report's bench


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class ChatTokenizer:
    """Conversations -> token ids with the model's own chat template (as create_chat_completion does)."""

    def __init__(self, llm: "llama_cpp.Llama"):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("the model has no chat template (tokenizer.chat_template); give --prompts with plain "
                             "text prompts and a chat model, or a model with a template")
        tok = lambda i: llm.detokenize([i], special=True).decode("utf-8", "ignore")  # noqa: E731
        self.fmt = Jinja2ChatFormatter(template=template, eos_token=tok(llm.token_eos()), bos_token=tok(llm.token_bos()))
        self.llm = llm

    def __call__(self, messages: Messages) -> list[int]:
        r = self.fmt(messages=messages)
        return self.llm.tokenize(r.prompt.encode("utf-8"), add_bos=not r.added_special, special=True)


def stage_prompts(out: Path, llm, chat: ChatTokenizer, gen: BatchedGenerator, cfg: DataConfig,
                  prompts_file: Optional[Path]) -> list[Messages]:
    path = out / "prompts.jsonl"
    if path.exists():
        return [json.loads(line)["messages"] for line in path.read_text().splitlines() if line.strip()]
    if prompts_file is not None:
        convs = load_prompts(prompts_file)
        _log(f"{len(convs)} prompts from {prompts_file}")
    else:
        _log(f"the target writes {cfg.n_prompts} requests (chat, code, math, lists, explanations, ...)")
        asks = request_writing_prompts(int(cfg.n_prompts * 1.3), cfg.seed)
        outs = gen.generate([chat(m) for m in asks], max_new=64, temperature=0.9, seed=cfg.seed)
        seen, convs = set(), []
        for o in outs:
            text = clean_request(llm.detokenize(o).decode("utf-8", "ignore"))
            if len(text) >= 12 and text not in seen:
                seen.add(text)
                convs.append([{"role": "user", "content": text}])
        convs = convs[: cfg.n_prompts]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    tmp.rename(path)
    return convs


def stage_samples(out: Path, chat: ChatTokenizer, gen: BatchedGenerator, convs: list[Messages],
                  cfg: DataConfig) -> Path:
    """The target's answers (samples.jsonl) and their features (features/), written together,
    a shard at a time: a sample is done once its shard exists."""
    fdir = out / "features"
    done = {int(i) for shard in read_shards(fdir) for i in shard["ids"]}
    todo = [i for i in range(len(convs)) if i not in done]
    if todo:
        _log(f"the target answers {len(todo)} prompts ({len(done)} already done), {cfg.n_seq} at a time, "
             f"capturing layers {gen.capture.layer_ids}")
        for p in fdir.glob("shard-*.tmp.npz"):
            p.unlink()
        prompts = [chat(convs[i])[-cfg.max_prompt_tokens:] for i in todo]
        writer = ShardWriter(fdir)
        records: dict[int, dict] = {}
        t0, n_tok, n_done = time.time(), [0], [len(done)]
        with (out / "samples.jsonl").open("a") as f:
            def save(ids: list[int]) -> None:
                for i in ids:
                    f.write(json.dumps(records.pop(i)) + "\n")
                if ids:
                    f.flush()

            def on_done(j: int, response: list[int], feats, top) -> None:
                records[todo[j]] = {"i": todo[j], "prompt": prompts[j], "response": response}
                n_tok[0] += len(response)
                n_done[0] += 1
                save(writer.add(todo[j], prompts[j], response, feats, top))
                if n_done[0] % 50 == 0:
                    _log(f"  {n_done[0]}/{len(convs)} answered, {n_tok[0] / (time.time() - t0):.0f} tokens/s")
            gen.generate(prompts, max_new=cfg.max_new_tokens, temperature=0.0, on_done=on_done, keep_top=cfg.top_k)
            save(writer.flush())
    return fdir


def stage_vocab(out: Path, fdir: Path, n_vocab: int, eos: int, cfg: DataConfig) -> np.ndarray:
    path = out / "vocab.npz"
    if path.exists():
        return np.load(path)["d2t"]
    counts = np.zeros(n_vocab, np.int64)
    for shard in read_shards(fdir):
        np.add.at(counts, shard["tokens"][shard["loss"] == 1], 1)
    d2t = build_draft_vocab(counts, cfg.draft_vocab, always=(eos,))
    np.savez(path, d2t=d2t, counts=counts)
    _log(f"draft vocabulary: {len(d2t)} tokens cover {100 * coverage(counts, d2t):.1f}% of response tokens")
    return d2t


def prepare_data(model_path: str, out: Path, cfg: DataConfig, prompts_file: Optional[Path] = None):
    """Stages 1-4. Returns (feature dir, d2t, layer ids, target llm)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    llm = llama_cpp.Llama(model_path, n_ctx=512, n_threads=cfg.threads, n_gpu_layers=cfg.n_gpu_layers, verbose=False)
    n_layer = int(llama_cpp.llama_model_n_layer(llm.model))
    layer_ids = cfg.layer_ids or [2, n_layer // 2, n_layer - 3]
    chat = ChatTokenizer(llm)
    max_len = cfg.max_prompt_tokens + cfg.max_new_tokens + 8
    gen = BatchedGenerator(llm, n_seq=cfg.n_seq, max_len=max_len)
    convs = stage_prompts(out, llm, chat, gen, cfg, prompts_file)
    gen.close()
    arch = str(llm.metadata.get("general.architecture", "unknown"))
    capture = FeatureCapture(arch, layer_ids, int(llama_cpp.llama_model_n_embd(llm.model)), n_layer)
    gen = BatchedGenerator(llm, n_seq=cfg.n_seq, max_len=max_len, capture=capture)
    fdir = stage_samples(out, chat, gen, convs, cfg)
    gen.close()
    d2t = stage_vocab(out, fdir, llm.n_vocab(), llm.token_eos(), cfg)
    return fdir, d2t, layer_ids, llm


def run(model_path: str, out: Path, data_cfg: DataConfig, train_cfg: "TrainConfig",
        prompts_file: Optional[Path] = None, heldout: Optional[Path] = None, outtype: str = "q8_0") -> dict:
    """The whole `llama-eagle3 train` command; returns the report."""
    import torch

    from eagle3_convert.head import Eagle3Config
    from eagle3_convert.target import gguf_tensor, open_gguf
    from .export import export
    from .model import HeadModule
    from .report import write_report
    from .trainer import Samples, train

    t_start = time.time()
    fdir, d2t, layer_ids, llm = prepare_data(model_path, out, data_cfg, prompts_file)
    t_data = time.time() - t_start
    m = llm.model
    n_embd = int(llama_cpp.llama_model_n_embd(m))
    n_head = int(llama_cpp.llama_model_n_head(m))
    n_kv = int(llama_cpp.llama_model_n_head_kv(m))
    reader = open_gguf(Path(model_path))
    arch = llm.metadata["general.architecture"]
    embed = gguf_tensor(reader, "token_embd.weight")
    output = gguf_tensor(reader, "output.weight")
    output = embed if output is None else output  # tied embeddings
    ff = int(llm.metadata.get(f"{arch}.feed_forward_length", 4 * n_embd))
    config = Eagle3Config(
        hidden_size=n_embd, intermediate_size=ff, num_attention_heads=n_head, num_key_value_heads=n_kv,
        head_dim=n_embd // n_head, rms_norm_eps=float(llm.metadata.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(llm.metadata.get(f"{arch}.rope.freq_base", 10000.0)), target_hidden_size=n_embd,
        vocab_size=llm.n_vocab(), draft_vocab_size=len(d2t), target_layers=tuple(layer_ids),  # type: ignore[arg-type]
        max_position_embeddings=int(llm.metadata.get(f"{arch}.context_length", 4096)), norm_before_fc=True)
    (out / "train_config.json").write_text(json.dumps(asdict(train_cfg), indent=1))
    model = HeadModule(config, embed, output[d2t], seed=train_cfg.seed)
    samples = Samples(fdir, d2t, llm.n_vocab())
    soft = "with" if samples.has_top and train_cfg.soft_weight > 0 else "without"
    _log(f"training on {len(samples)} samples, {sum(len(t) for t in samples.tokens)} tokens, {soft} soft labels")
    t0 = time.time()
    history = train(model, samples, out, train_cfg, log=_log)
    t_train = time.time() - t0
    gguf_path = export(model.to_head(d2t), model_path, out, outtype, log=_log)
    report = write_report(out, model_path, str(gguf_path), history, heldout,
                          {"data_seconds": t_data, "train_seconds": t_train, "layer_ids": layer_ids,
                           "draft_vocab": len(d2t), "samples": len(samples),
                           "tokens": int(sum(len(t) for t in samples.tokens)), "threads": train_cfg.threads,
                           "torch_threads": torch.get_num_threads(), "n_gpu_layers": data_cfg.n_gpu_layers,
                           "torch_device": str(next(model.parameters()).device)},
                          n_gpu_layers=data_cfg.n_gpu_layers, log=_log)
    return report
