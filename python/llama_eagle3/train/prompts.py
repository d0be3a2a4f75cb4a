"""Training prompts: the user's file (text lines, jsonl, ShareGPT) or self-generated requests."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]

TASKS = [
    "a casual chat question", "a request to write a short piece of Python code", "a simple arithmetic word problem",
    "a request for a list of tips", "a request to explain a concept simply", "a request to summarize an idea",
    "a request to write a short poem", "a question asking for advice", "a request to compare two things",
    "a request for step-by-step instructions", "a request to write a short email", "a trivia question",
]
TOPICS = [
    "cooking", "space", "history", "programming", "health", "travel", "music", "animals", "money", "school",
    "sports", "weather", "gardening", "movies", "math", "physics", "friendship", "work", "cars", "the ocean",
    "books", "computers", "art", "language learning", "sleep", "games", "chemistry", "cities", "holidays", "robots",
]


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


def request_writing_prompts(n: int, seed: int) -> list[Messages]:
    """Instructions that make the target write n user requests across tasks and topics."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        task, topic = rng.choice(TASKS), rng.choice(TOPICS)
        out.append([{"role": "user", "content": f"Write {task} about {topic} that a user might ask an AI "
                                                f"assistant. Reply with the request only."}])
    return out


def clean_request(text: str) -> str:
    """The first paragraph of a generated request, without quotes or a 'Request:' label."""
    text = text.strip().split("\n\n")[0].strip().strip('"').strip()
    for label in ("Request:", "User:", "Question:"):
        if text.startswith(label):
            text = text[len(label):].strip()
    return text
