"""`llama-eagle3 chat`: multi-turn streaming, Ctrl-C stops an answer and the next turn is right."""

from __future__ import annotations

import io

import llama_cpp

from llama_eagle3 import Llama
from llama_eagle3.chat import run


class InterruptingOut(io.StringIO):
    """Raises KeyboardInterrupt (as Ctrl-C would) at the n-th streamed write of the first answer."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.writes, self.answering = at, 0, False

    def write(self, s: str) -> int:
        if s.startswith("\n> "):
            self.answering = not self.answering and self.writes < self.at
        elif self.answering:
            self.writes += 1
            if self.writes == self.at:
                raise KeyboardInterrupt
        return super().write(s)


def test_chat_turns_with_interrupt_equal_plain(targets, heads):
    spec = Llama(str(targets["llama"]), n_ctx=1024, verbose=False, eagle3_head=str(heads["llama"]),
                 eagle3_p_min=0.0, eagle3_adaptive=False)
    out = InterruptingOut(at=5)
    history = run(spec, "be brief", max_tokens=30, temperature=0.0,
                  inp=io.StringIO("the cat sat\n\nin the beginning\nonce more\nexit\n"), out=out)
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    text = out.getvalue()
    assert "[stopped]" in text and text.count("mean accepted length") == 3 and "speculation" in text

    # every answer is what plain decoding gives for the same conversation so far (the stopped one:
    # a prefix of it)
    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=1024, verbose=False, flash_attn=True)
    for i in (2, 4, 6):
        want = plain.create_chat_completion(history[:i], max_tokens=30, temperature=0.0)["choices"][0]["message"]
        if i == 2:
            assert want["content"].startswith(history[i]["content"]) and want["content"] != history[i]["content"]
        else:
            assert history[i]["content"] == want["content"], i
