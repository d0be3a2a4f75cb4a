"""Prompt files and chat prompts, shared by the bench, training and tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import llama_cpp

Messages = list[dict[str, str]]


def load_prompts(path: Path) -> list[Messages]:
    """Conversations ending with a user turn, from .txt (one prompt per line), .jsonl with
    {"prompt"}, {"messages"} or ShareGPT {"conversations": [{"from", "value"}]} records."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return [[{"role": "user", "content": line.strip()}] for line in text.splitlines() if line.strip()]
    out = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rec: Any = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i + 1}: not JSON ({e})") from None
        out.append(_conversation(rec, f"{path}:{i + 1}"))
    return out


def _conversation(rec: Any, where: str) -> Messages:
    if isinstance(rec, str):
        return [{"role": "user", "content": rec}]
    if isinstance(rec, dict) and isinstance(rec.get("prompt"), str):
        return [{"role": "user", "content": rec["prompt"]}]
    if isinstance(rec, dict) and isinstance(rec.get("messages"), list):
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in rec["messages"]]
    elif isinstance(rec, dict) and isinstance(rec.get("conversations"), list):
        roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
        msgs = [{"role": roles.get(str(m.get("from")), "user"), "content": str(m.get("value", ""))}
                for m in rec["conversations"]]
    else:
        raise ValueError(f"{where}: expected a string, {{'prompt'}}, {{'messages'}} or {{'conversations'}}")
    # train on the answer to the last user turn: drop a trailing assistant turn
    while msgs and msgs[-1]["role"] != "user":
        msgs.pop()
    if not msgs:
        raise ValueError(f"{where}: the conversation has no user turn")
    return msgs


def rendered_prompt(llm: llama_cpp.Llama, messages: list[dict]) -> str:
    """The chat prompt as text, as llama-cpp-python's chat handler for this model renders it."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata["tokenizer.chat_template"]
    eos = llm.detokenize([llm.token_eos()]).decode(errors="replace")
    bos = llm.detokenize([llm.token_bos()]).decode(errors="replace")
    return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages).prompt
