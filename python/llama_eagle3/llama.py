"""llama_eagle3.Llama: llama_cpp.Llama whose generation is EAGLE-3 speculative.

The engine owns the target's KV state. It keeps llama-cpp-python's invariant
(the target KV holds exactly input_ids[:n_tokens]) and adds the proposer's
(features of every target position from the head's start on are in the head's KV
or pending; see proposer.py). A plain step (K = 0) more than OFF_WINDOW positions
before the next probe is decoded without capture, and the head's start moves past
it (proposer.skip). A round:

    pending  = tokens to evaluate, [t_n] in steady state (t_n: the last sampled token)
    drafts   = proposer.propose(t_n)                        # d_1..d_K, K may be 0
    decode   [t_n, d_1..d_K] at positions n..n+K             # ONE target decode, logits on every row
    commit   accept_chain(sample row i, drafts)              # y_0..y_a, a drafts accepted
    rollback target KV to n+a+1; hand features of n..n+a to the proposer

A tree round (eagle3_tree_width > 1, when the policy picks it) drafts a tree instead, decodes
t_n and every node in one multi-sequence batch laid out depth first (tree.py), commits with
accept_tree, and keeps the cells of t_n and of the accepted nodes on the head's top-1 chain
(sequence 0, in cell order); accepted tokens past a branch are committed, their features and
cells dropped, and the next round re-evaluates them (_resync), as after a stop.
    yield    y_0..y_a, each with n_tokens set to its own position as plain decoding would have
             it (accepted tokens after it wait in the KV past n_tokens); next round evaluates [y_a]

Everything that changes the KV (prefix reuse, reset, load_state, eval) goes
through methods that keep both invariants.
"""

from __future__ import annotations

import ctypes
import threading
import time
import warnings
from pathlib import Path
from typing import Generator, Optional, Sequence, Union

import numpy as np

from ._native import core, llama_cpp
from .calibration import calibrate
from .capture import CaptureMode, FeatureCapture, context_address
from .hub import cached_repo_file, offline, resolve_head
from .policy import DraftPolicy
from .proposer import Eagle3Proposer
from .stats import SpeculativeStats
from .verifier import SimulatedAcceptance, accept_chain, accept_tree

from eagle3_convert.errors import ConversionError
from eagle3_convert.gguf_io import check_head_gguf
from eagle3_convert.target import TargetInfo

import llama_cpp._internals as internals
from llama_cpp.llama import LogitsProcessorList, StoppingCriteriaList
from llama_cpp.llama_grammar import LlamaGrammar


MAX_TREE_WIDTH = 8
MAX_TREE_NODES = 63  # the target context gets one sequence per leaf
# the head context a probe decodes: kept while speculation is off (proposer.forget) and captured
# only by the plain steps this close to the next probe (the others: proposer.skip)
OFF_WINDOW = 16


class Llama(llama_cpp.Llama):
    """A drop-in llama_cpp.Llama; with eagle3_head it decodes speculatively and losslessly.

    Args (besides every llama_cpp.Llama argument):
        eagle3_head: an EAGLE-3 head: a GGUF (convert-eagle3-gguf makes one), an HF head checkpoint
            directory, or a Hugging Face hub repo id "org/name[@revision]" (downloaded with
            huggingface_hub, HF_HUB_OFFLINE honoured); the last two are converted against
            model_path once and cached (llama_eagle3.hub).
        eagle3_draft_max: longest chain drafted per round.
        eagle3_adaptive: choose each round's draft length (0 = plain decoding) from the target's
            decode cost T(n), the head's step cost and the acceptance measured in this process
            (policy.py); False drafts eagle3_draft_max every round (experiments).
        eagle3_p_min: stop a chain when the head's top-1 probability falls below this.
        eagle3_capture: "auto" (llama.cpp's built-in extraction where the architecture has it,
            otherwise the graph hook), "hook" or "builtin".
        eagle3_tree_width: > 1 makes draft trees of this width a candidate (tree.py; with
            eagle3_adaptive=False every round drafts one); 1: chains only.
        eagle3_tree_nodes: node budget of a tree (default 3 * eagle3_draft_max).

    With eagle3_head, flash_attn defaults to True: greedy output is then token-for-token
    that of llama_cpp.Llama(..., flash_attn=True).
    """

    def __init__(self, model_path: str, *args, eagle3_head: Optional[Union[str, Path]] = None,
                 eagle3_draft_max: int = 4, eagle3_adaptive: bool = True, eagle3_p_min: float = 0.5,
                 eagle3_capture: CaptureMode = "auto", eagle3_tree_width: int = 1,
                 eagle3_tree_nodes: Optional[int] = None, **kwargs):
        self._spec: Optional[Eagle3Proposer] = None
        self._lock = threading.Lock()  # rounds and state changes of one generation at a time
        self._generation: Optional[object] = None
        self._capture: Optional[FeatureCapture] = None
        self._stats = SpeculativeStats()
        self._simulated: Optional[SimulatedAcceptance] = None  # benchmark only: see _bench_configure
        if eagle3_draft_max < 0:
            raise ValueError(f"eagle3_draft_max must be >= 0, got {eagle3_draft_max}")
        if not 0.0 <= eagle3_p_min <= 1.0:
            raise ValueError(f"eagle3_p_min must be in [0, 1], got {eagle3_p_min}")
        if eagle3_tree_nodes is None:
            eagle3_tree_nodes = 3 * eagle3_draft_max
        if not 1 <= eagle3_tree_width <= MAX_TREE_WIDTH:
            raise ValueError(f"eagle3_tree_width must be in 1..{MAX_TREE_WIDTH}, got {eagle3_tree_width}")
        if eagle3_tree_width > 1 and not eagle3_draft_max <= eagle3_tree_nodes <= MAX_TREE_NODES:
            raise ValueError(f"eagle3_tree_nodes must be in eagle3_draft_max..{MAX_TREE_NODES} "
                             f"({eagle3_draft_max}..{MAX_TREE_NODES}), got {eagle3_tree_nodes}")
        self.eagle3_draft_max = eagle3_draft_max
        self.eagle3_p_min = eagle3_p_min
        self.eagle3_tree_width = eagle3_tree_width
        self.eagle3_tree_nodes = eagle3_tree_nodes if eagle3_tree_width > 1 else 0
        self._policy = DraftPolicy(eagle3_draft_max, adaptive=eagle3_adaptive, tree_width=eagle3_tree_width,
                                   tree_nodes=self.eagle3_tree_nodes)
        if eagle3_capture not in ("auto", "hook", "builtin"):
            raise ValueError(f"eagle3_capture must be 'auto', 'hook' or 'builtin', got {eagle3_capture!r}")
        head_path = None
        if eagle3_head is not None:
            if kwargs.get("draft_model") is not None:
                raise ValueError("eagle3_head and draft_model cannot be combined")
            if not Path(eagle3_head).expanduser().is_file() and not Path(model_path).is_file():
                raise ValueError(f"Model path does not exist: {model_path}")  # llama_cpp.Llama's message
            # a GGUF as is; an HF checkpoint directory or a hub repo id: converted once, cached (hub.py)
            head_path = resolve_head(eagle3_head, model_path)
            # llama.cpp's attention without flash attention gives different results for a token
            # decoded alone and the same token inside a batch (measured on CPU: up to 1.7 in a
            # logit), so no batched verification could reproduce plain decoding bit for bit.
            # Flash attention is batch-invariant: speculative output equals plain decoding with it.
            if kwargs.setdefault("flash_attn", True) is not True:
                warnings.warn("flash_attn=False: llama.cpp's attention then depends on the batch size, so "
                              "speculative output may differ from plain decoding; use flash_attn=True for "
                              "identical output", stacklevel=2)
        super().__init__(model_path, *args, **kwargs)
        self._policy.graph_rebuilds = self.model_params.n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        if head_path is not None:
            # one verify decode (one ubatch: the capture reads one) holds the last token and every draft
            rows = 1 + max(eagle3_draft_max, self.eagle3_tree_nodes)
            if min(self.n_batch, self.context_params.n_ubatch) < rows:
                raise ValueError(f"n_batch and n_ubatch must be at least {rows} for eagle3_draft_max={eagle3_draft_max}"
                                 + (f" and eagle3_tree_nodes={self.eagle3_tree_nodes}" if eagle3_tree_width > 1 else "")
                                 + f" (one verify decode holds the last token and every draft); got n_batch="
                                 f"{self.n_batch}, n_ubatch={self.context_params.n_ubatch}")
            self._attach_head(head_path, eagle3_capture)

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: Optional[str], additional_files: Optional[list] = None,
                        local_dir: Optional[Union[str, Path]] = None, local_dir_use_symlinks="auto",
                        cache_dir: Optional[Union[str, Path]] = None, **kwargs) -> "Llama":
        """llama_cpp.Llama.from_pretrained (eagle3_head and every other argument pass through), which
        also works offline (HF_HUB_OFFLINE=1) from the hub cache: llama-cpp-python's lists the repo's
        files online first, so offline the one cached file matching `filename` is used."""
        if offline() and filename is not None and not additional_files and local_dir is None:
            path = cached_repo_file(repo_id, filename, None if cache_dir is None else str(cache_dir))
            return cls(model_path=str(path), **kwargs)
        return super().from_pretrained(repo_id, filename, additional_files=additional_files, local_dir=local_dir,
                                       local_dir_use_symlinks=local_dir_use_symlinks, cache_dir=cache_dir,
                                       **kwargs)

    # ---- set-up ---------------------------------------------------------------------

    def _target_info(self) -> TargetInfo:
        m = self._model.model
        return TargetInfo(arch=str(self.metadata.get("general.architecture", "unknown")),
                          n_layer=int(llama_cpp.llama_model_n_layer(m)), n_embd=int(llama_cpp.llama_model_n_embd(m)),
                          n_vocab=self._n_vocab, source=self.model_path)

    def _attach_head(self, path: Path, capture_mode: CaptureMode) -> None:
        target = self._target_info()
        try:
            head = check_head_gguf(path, target)
        except ConversionError as e:
            raise ValueError(f"EAGLE-3 head {path} cannot be used with {self.model_path}: {e}") from None
        if self._is_recurrent or self._is_hybrid:
            warnings.warn(f"{target.arch} is a recurrent/hybrid model: its state cannot be rolled back per token, "
                          f"so speculation is off and generation is plain", stacklevel=3)
            return
        capture = FeatureCapture(target.arch, head.config.target_layers, target.n_embd, target.n_layer, capture_mode)
        capture.attach_to(self, n_seq_max=self.eagle3_tree_nodes if self.eagle3_tree_width > 1 else 1)
        ctx = context_address(self._ctx.ctx)
        runner = core.HeadRunner(str(path), ctx, self._n_ctx, self.n_batch, self.context_params.n_threads,
                                 self.context_params.n_threads_batch, int(self.model_params.n_gpu_layers),
                                 [] if head.d2t is None else [int(x) for x in head.d2t],
                                 tree_width_max=self.eagle3_tree_width,
                                 tree_cells_max=self.eagle3_tree_width * self.eagle3_draft_max)
        if self.eagle3_tree_width > 1:
            self._tree_batch = internals.LlamaBatch(n_tokens=self.eagle3_tree_nodes + 1, embd=0,
                                                    n_seq_max=self.eagle3_tree_nodes, verbose=False)
            self._stack.callback(self._tree_batch.close)
        self._capture = capture
        self._spec = Eagle3Proposer(runner, catch_up_rows=self.n_batch)
        self._stack.callback(self._spec.close)  # LIFO: the head goes before the target context
        if self._policy.adaptive and self.eagle3_draft_max > 0:
            calibrate(self)

    @property
    def _ctx_limit(self) -> int:
        """Positions llama-cpp-python tracks: llama.cpp may pad n_ctx beyond the input_ids array."""
        return min(self._n_ctx, len(self.input_ids))

    def close(self) -> None:
        if "_stack" in self.__dict__:  # __init__ may have raised before llama_cpp.Llama set it up
            super().close()

    # ---- public additions -----------------------------------------------------------

    @property
    def is_speculative(self) -> bool:
        return self._spec is not None

    @property
    def speculation_on(self) -> bool:
        """Whether the next round would draft (the adaptive policy may have switched speculation off)."""
        return self._spec is not None and self.eagle3_draft_max > 0 and (
            self._policy.decide() != (False, 0))

    def speculative_stats(self) -> dict:
        """Counters since construction or reset_speculative_stats(): rounds, drafted, accepted,
        mean_accepted_length (tokens committed per verify, bonus included), acceptance_at (per draft
        position), seconds spent drafting, verifying, sampling and elsewhere in the loop, and the
        draft-length policy's current estimates (policy: alpha, decode_ms per row count, draft_step_ms)."""
        return {**self._stats.as_dict(), "policy": self._policy.snapshot()}

    def reset_speculative_stats(self) -> None:
        self._stats = SpeculativeStats()

    def _bench_configure(self, policy: DraftPolicy, simulated: Optional[SimulatedAcceptance],
                         stats: SpeculativeStats) -> None:
        """Benchmark only (bench_simulated.py): the draft policy of later rounds (a fixed chain or a
        calibrated adaptive one), simulated acceptance (None: real verification) and the counters
        they add to. Chains only."""
        if simulated is not None and self.eagle3_tree_width > 1:
            raise ValueError("simulated acceptance is defined for chains only: use eagle3_tree_width=1")
        if policy.k_max > self.eagle3_draft_max:
            raise ValueError(f"a policy drafting up to {policy.k_max} needs eagle3_draft_max >= {policy.k_max}")
        policy.graph_rebuilds = self._policy.graph_rebuilds
        self._policy, self._simulated, self._stats = policy, simulated, stats

    # ---- KV state -------------------------------------------------------------------

    def reset(self) -> None:
        super().reset()
        if self._spec is not None:
            self._spec.reset()

    def load_state(self, state) -> None:
        super().load_state(state)
        if self._spec is not None:
            # restored positions carry no features: keep the prefix the head knows
            self._truncate(self.n_tokens)

    def _forget_from(self, pos: int) -> None:
        """Removes every sequence's target KV cells at positions >= pos (llama-cpp-python's
        kv_cache_seq_rm reads seq_id -1 as 0, so the llama.cpp call is made directly)."""
        llama_cpp.llama_memory_seq_rm(self._ctx.memory, -1, pos, -1)

    def _truncate(self, m: int) -> int:
        """Keeps target positions [0, keep) with keep <= m chosen so both invariants hold."""
        keep = self._spec.truncate(m)
        if keep < self.n_tokens:
            self._forget_from(keep)
        self.n_tokens = keep
        self._requires_eval = True
        return keep

    def _decode(self, tokens: Sequence[int], n_logits: int, capture: bool = True) -> None:
        """Evaluates tokens at n_tokens.. (n_batch chunks) with logits on the last n_logits rows
        (all rows with logits_all) and hands their features to the proposer (capture=False: has it
        skip them). Callers first bring the proposer in step with n_tokens (_truncate / _resync)."""
        self._forget_from(self.n_tokens)
        n_total = len(tokens)
        for i in range(0, n_total, self.n_batch):
            chunk = tokens[i : min(n_total, i + self.n_batch)]
            n_past, n = self.n_tokens, len(chunk)
            features = self._capture.decode(self, chunk, n_past, n_total - n_logits - i, capture)
            self.input_ids[n_past : n_past + n] = chunk
            if self._logits_all:
                logits = np.ctypeslib.as_array(self._ctx.get_logits(), shape=(n * self._n_vocab,))
                self.scores[n_past : n_past + n, :].reshape(-1)[::] = logits
            self.n_tokens += n
            self._requires_eval = False
            if n_past + n <= self._ctx_limit:
                # past the limit llama-cpp-python stops tracking tokens; the proposer falls behind
                # (no drafting there) and prefix reuse re-evaluates what it lacks
                if features is None:
                    self._spec.skip(n)
                else:
                    self._spec.observe(features, self.input_ids)

    def eval(self, tokens: Sequence[int]) -> None:
        if self._spec is None:
            return super().eval(tokens)
        self._decode(self._resync() + list(tokens), 1)

    # ---- generation -----------------------------------------------------------------

    def _reuse_prefix(self, tokens: list[int], reset: bool) -> list[int]:
        """Prompt tokens still to evaluate after reusing the cached prefix (at least one)."""
        if reset and self.n_tokens > 0:
            longest = 0
            for a, b in zip(self._input_ids, tokens):
                if a != b:
                    break
                longest += 1
            want = longest - 1 if longest == len(tokens) else longest  # re-evaluate >= 1 token
            keep = self._truncate(want) if want > 0 else 0
            if keep > 0:
                return tokens[keep:]
        if reset or self.n_tokens == 0:
            self.reset()
            return tokens
        return self._resync() + tokens

    def _resync(self) -> list[int]:
        """Drops target positions whose features the proposer lacks; returns them for re-evaluation."""
        old = self.n_tokens
        keep = self._truncate(old)
        return [int(t) for t in self.input_ids[keep:old]]

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor: Optional[LogitsProcessorList] = None,
                 stopping_criteria: Optional[StoppingCriteriaList] = None,
                 grammar: Optional[LlamaGrammar] = None) -> Generator[int, Optional[Sequence[int]], None]:
        if self._spec is None:
            yield from super().generate(
                tokens, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temp,
                repeat_penalty=repeat_penalty, reset=reset, frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, penalize_nl=penalize_nl,
                logits_processor=logits_processor, stopping_criteria=stopping_criteria, grammar=grammar)
            return
        t_resume = time.perf_counter()
        generation = object()
        with self._lock:
            self._generation = generation  # a generation started later supersedes this one
            self._mirostat_mu = ctypes.c_float(2.0 * mirostat_tau)
            self._sampler = self._init_sampler(
                top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temp,
                repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, penalize_nl=penalize_nl,
                logits_processor=logits_processor, grammar=grammar)
            pending = self._reuse_prefix(list(tokens), reset)
        stats = self._stats
        while True:
            with self._lock:
                self._check_current(generation)
                committed, first_pos = self._round(pending)
            for i, token in enumerate(committed):
                pos = first_pos + i  # the position whose logits produced this token
                with self._lock:
                    self._check_current(generation)
                    # plain decoding's state while this token is out: everything before it evaluated.
                    # Accepted tokens after it stay in the KV; a caller that stops here leaves them
                    # past n_tokens, where the next decode drops them.
                    self.n_tokens = pos + 1
                    stop = stopping_criteria is not None and stopping_criteria(
                        self.input_ids[: pos + 1], self.scores[pos] if self._logits_all else self.scores[0])
                stats.generate_seconds += time.perf_counter() - t_resume
                if stop:
                    return
                sent = yield token
                t_resume = time.perf_counter()
                if sent is not None:
                    # the caller appended tokens: continue from token, dropping later commits
                    with self._lock:
                        self._check_current(generation)
                        keep = self._truncate(pos + 1)
                    pending = [*(int(t) for t in self.input_ids[keep : pos + 1]), token, *sent]
                    break
            else:
                pending = [committed[-1]]

    def _check_current(self, generation: object) -> None:
        """One Llama runs one generation at a time: a generation resumed after another one started
        (in another thread, or a stream left open) stops here instead of corrupting either."""
        if self._generation is not generation:
            raise RuntimeError("this generation was superseded: another generation started on the same "
                               "llama_eagle3.Llama (one Llama runs one generation at a time; use one Llama per "
                               "thread, or serialise requests, e.g. with python -m llama_eagle3.server)")

    def _round(self, pending: list[int]) -> tuple[list[int], int]:
        """One target decode of pending (+ a draft); returns the committed tokens and the position
        whose logits produced the first of them. On return the target KV holds every committed
        token but the last."""
        stats, policy = self._stats, self._policy
        if self._spec.feature_end < self.n_tokens:  # tokens a tree round committed past a branch
            pending = self._resync() + pending
        n0 = self.n_tokens
        drafts: list[int] = []
        probe: list[int] = []  # an unverified one-token draft while the policy has speculation off
        capture = self.eagle3_draft_max > 0  # False: nothing reads this decode's features (OFF_WINDOW)
        if len(pending) == 1 and self.eagle3_draft_max > 0 and self._spec.feature_end == n0 and n0 > 0:
            room = self._ctx_limit - n0 - 1  # the verify batch must fit in the context
            tree, k = policy.decide()
            if tree and room >= self.eagle3_draft_max and self._spec.n_pending > 0:  # (none after a skip)
                return self._tree_round(pending[0])
            k = min(k, room)
            if k > 0 or (room > 0 and policy.probe_due()):
                # a round after plain steps first decodes up to 2 * OFF_WINDOW pending pairs: that
                # catch-up is not a step cost (nor is a probe's, which is mostly catch-up)
                steady = self._spec.n_pending <= self.eagle3_draft_max + 1
                t0 = time.perf_counter()
                proposed = self._spec.propose(self.input_ids, pending[0], max(k, 1), self.eagle3_p_min)
                draft_seconds = time.perf_counter() - t0
                stats.draft_seconds += draft_seconds
                if k > 0 and steady:
                    policy.observe_draft(len(proposed), draft_seconds)
                drafts, probe = (proposed, []) if k > 0 else ([], proposed)
            elif policy.adaptive and not tree:
                capture = policy.plain_steps_to_probe() < OFF_WINDOW
        batch = pending + drafts
        t0 = time.perf_counter()
        self._decode(batch, len(drafts) + 1, capture)
        t1 = time.perf_counter()
        if drafts:
            stats.verify_seconds += t1 - t0
        else:
            stats.plain_decode_seconds += t1 - t0
        if len(pending) == 1:
            policy.observe_decode(len(batch), t1 - t0)
        first_pos = n0 + len(pending) - 1
        n_rows = len(drafts) + 1

        def sample_row(i: int) -> int:
            self.n_tokens = first_pos + i + 1  # logits processors see the prefix of this row
            return self._sampler.sample(self._ctx, i - n_rows)

        accept = accept_chain if self._simulated is None else self._simulated.accept_chain
        committed = accept(sample_row, drafts)
        stats.sample_seconds += time.perf_counter() - t1
        n_accepted = len(committed) - 1
        self.n_tokens = n0 + len(batch)
        if drafts:
            stats.record_round(len(drafts), n_accepted)
            policy.observe_round(len(drafts), n_accepted)
            self._truncate(first_pos + 1 + n_accepted)
        elif len(pending) == 1:
            stats.record_round(0, 0, captured=capture)
            if probe:
                hit = probe[0] == committed[0] if self._simulated is None else self._simulated.probe_hit()
                stats.record_probe(hit)
                policy.observe_probe(hit, draft_seconds)
            if policy.adaptive:
                self._spec.forget(OFF_WINDOW)
        return committed, first_pos

    def _tree_round(self, root: int) -> tuple[list[int], int]:
        """A round that drafts a tree after root (the last committed token, position n), verifies
        root and every node in one decode and keeps the accepted path (see tree.py). Returns
        what _round returns."""
        stats, policy = self._stats, self._policy
        n0 = self.n_tokens
        t0 = time.perf_counter()
        tree = self._spec.propose_tree(self.input_ids, root, self.eagle3_draft_max, self.eagle3_tree_width,
                                       self.eagle3_tree_nodes).depth_first()
        t1 = time.perf_counter()
        stats.draft_seconds += t1 - t0
        seqs = tree.row_sequences()                      # [1 + m] sequence ids per batch row
        features = self._decode_tree([root, *tree.tokens], [n0, *(n0 + d for d in tree.depth)], seqs)
        t2 = time.perf_counter()
        stats.verify_seconds += t2 - t1
        policy.observe_decode(len(tree) + 1, t2 - t1)

        def sample_row(r: int) -> int:
            path = tree.path_to(r - 1) if r > 0 else []
            for j, node in enumerate(path):              # logits processors see the row's prefix
                self.input_ids[n0 + 1 + j] = tree.tokens[node]
            self.n_tokens = n0 + 1 + len(path)
            return self._sampler.sample(self._ctx, r)

        committed, path = accept_tree(sample_row, tree)
        stats.sample_seconds += time.perf_counter() - t2
        rows = [0, *(i + 1 for i in path)]               # batch rows of positions n0..n0+a
        if self._logits_all:
            for j, r in enumerate(rows):
                self.scores[n0 + j, :] = np.ctypeslib.as_array(self._ctx.get_logits_ith(r), shape=(self._n_vocab,))
        kept = rows[: 1 + tree.chain_prefix(path)]     # rows 0..j: cells in order, sequence 0
        self._keep_sequence_0(n0 + len(kept))
        self._spec.observe(features[kept], self.input_ids)
        stats.record_round(len(tree), len(path), depth=max(tree.depth, default=0))
        policy.observe_tree(len(committed), t1 - t0)
        return committed, n0

    def _decode_tree(self, tokens: list[int], positions: list[int], seqs: list[list[int]]) -> np.ndarray:
        """One decode of a tree batch (logits on every row) after copying the committed context
        into every leaf's sequence; returns the rows' features [len(tokens), 3*Ht]."""
        self._forget_from(self.n_tokens)
        for s in range(1, len(seqs[0])):
            llama_cpp.llama_memory_seq_cp(self._ctx.memory, 0, s, -1, -1)
        b = self._tree_batch.batch
        b.n_tokens = len(tokens)
        for i, (t, p, ss) in enumerate(zip(tokens, positions, seqs)):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, p, len(ss), True
            for j, s in enumerate(ss):
                b.seq_id[i][j] = s
        self.input_ids[self.n_tokens] = tokens[0]
        self._capture.begin()
        self._ctx.decode(self._tree_batch)
        return self._capture.take(len(tokens))

    def _keep_sequence_0(self, end: int) -> None:
        """After a tree verify: keeps sequence 0's cells below position end (every other sequence's
        cells go); the target KV then holds input_ids[:end]."""
        llama_cpp.llama_memory_seq_keep(self._ctx.memory, 0)
        self._forget_from(end)
        self.n_tokens = end
