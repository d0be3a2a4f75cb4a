"""Training prompts: the user's file (..prompts.load_prompts) or self-generated requests."""

from __future__ import annotations

import random

from ..prompts import Messages, load_prompts

__all__ = ["Messages", "load_prompts", "request_writing_prompts", "clean_request"]

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
