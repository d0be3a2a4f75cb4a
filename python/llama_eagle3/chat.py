"""`llama-eagle3 chat`: multi-turn streaming chat in the terminal.

The conversation is re-sent each turn through the model's chat template; llama_eagle3.Llama
reuses the evaluated prefix, so a turn only evaluates what is new. Ctrl-C stops the current
answer (what was shown stays in the history) and the next turn goes on from a consistent
state. A status line after each answer: tokens/s, mean accepted length, whether the draft
policy currently has speculation on.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from .llama import Llama

Messages = list[dict[str, str]]


def answer(llm: Llama, messages: Messages, max_tokens: int, temperature: float, out: TextIO) -> tuple[str, bool]:
    """Streams one reply to out; returns (text shown, completed). Ctrl-C ends it early."""
    pieces: list[str] = []
    stream = llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=temperature, stream=True)
    try:
        for chunk in stream:
            piece = chunk["choices"][0]["delta"].get("content") or ""
            pieces.append(piece)
            out.write(piece)
            out.flush()
        return "".join(pieces), True
    except KeyboardInterrupt:
        return "".join(pieces), False
    finally:
        stream.close()


def status(llm: Llama, n_tokens: int, seconds: float) -> str:
    s = llm.speculative_stats()
    return (f"[{n_tokens / max(seconds, 1e-9):.1f} tokens/s | mean accepted length "
            f"{s['mean_accepted_length']:.2f} | speculation {'on' if llm.speculation_on else 'off'}]")


def run(llm: Llama, system: Optional[str], max_tokens: int, temperature: float,
        inp: Optional[TextIO] = None, out: Optional[TextIO] = None) -> Messages:
    """The chat loop; returns the conversation. Ends at EOF, 'exit' or 'quit'. inp, out: default
    sys.stdin and sys.stdout as they are when called."""
    inp, out = inp or sys.stdin, out or sys.stdout
    messages: Messages = [{"role": "system", "content": system}] if system else []
    out.write("Chat with EAGLE-3 speculative decoding. Ctrl-C stops an answer; Ctrl-D or 'exit' quits.\n")
    while True:
        out.write("\n> ")
        out.flush()
        try:
            line = inp.readline()
        except KeyboardInterrupt:
            out.write("\n")
            continue
        if not line or line.strip() in ("exit", "quit"):
            return messages
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.strip()})
        llm.reset_speculative_stats()
        t0 = time.perf_counter()
        text, done = answer(llm, messages, max_tokens, temperature, out)
        dt = time.perf_counter() - t0
        messages.append({"role": "assistant", "content": text})
        n = len(llm.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0
        out.write(("\n" if done else " [stopped]\n") + status(llm, n, dt) + "\n")
