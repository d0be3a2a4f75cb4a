"""llama_eagle3.Llama: llama_cpp.Llama whose generation is speculative (the facade).

This module is the llama-cpp-python surface: arguments, set-up (the head, the capture, the
policy), the public additions and the KV-changing overrides. Rounds, KV bookkeeping and the
token loop live in engine.py; drafts in proposer.py; verification in verifier.py; costs in
costs.py; the draft-length policy in policy.py; the plain fallback in fallback.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import warnings
from pathlib import Path
from typing import Generator, Optional, Sequence, Union

from ._native import core, llama_cpp
from .calibration import calibrate
from .capture import CaptureMode, FeatureCapture, context_address
from .dflash import DFlashDrafter, check_dflash_gguf, head_architecture
from .engine import Engine
from .mtp import MTP, MTP_HYBRID_ARCHS, MtpDrafter, NextnCapture, check_mtp_target, loading_nextn_layers
from .nohead import NGRAM_ONLY, NoCapture, NoHeadDrafter
from .fallback import Fallback
from .hub import cached_repo_file, offline, resolve_head
from .policy import DraftPolicy
from .proposer import Eagle3Proposer
from .stats import SpeculativeStats
from .verifier import SimulatedAcceptance

from eagle3_convert.errors import ConversionError
from eagle3_convert.gguf_io import check_head_gguf
from eagle3_convert.target import TargetInfo

import llama_cpp._internals as internals
from llama_cpp.llama import LogitsProcessorList, StoppingCriteriaList
from llama_cpp.llama_grammar import LlamaGrammar


MAX_TREE_WIDTH = 8
MAX_TREE_NODES = 63  # the target context gets one sequence per leaf


class Llama(llama_cpp.Llama):
    """A drop-in llama_cpp.Llama; with eagle3_head it decodes speculatively and losslessly.

    Args (besides every llama_cpp.Llama argument):
        eagle3_head: an EAGLE-3 or DFlash head (docs/dflash.md; the GGUF's general.architecture
            says which): a GGUF (convert-eagle3-gguf makes one), an HF head checkpoint
            directory, or a Hugging Face hub repo id "org/name[@revision]" (downloaded with
            huggingface_hub, HF_HUB_OFFLINE honoured); the last two are converted against
            model_path once and cached (llama_eagle3.hub); "ngram": n-gram copies of the context
            alone (nohead.py); "mtp": the target's own NextN (MTP) layers (mtp.py, docs/mtp.md).
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
        eagle3_ngram: beside the head, draft copies of the context's own repeats (ngram.py), verified
            only where their measured acceptance pays for the rows.

    With eagle3_head, flash_attn defaults to True: greedy output is then token-for-token
    that of llama_cpp.Llama(..., flash_attn=True).
    """

    def __init__(self, model_path: str, *args, eagle3_head: Optional[Union[str, Path]] = None,
                 eagle3_draft_max: int = 4, eagle3_adaptive: bool = True, eagle3_p_min: float = 0.5,
                 eagle3_capture: CaptureMode = "auto", eagle3_tree_width: int = 1,
                 eagle3_tree_nodes: Optional[int] = None, eagle3_ngram: bool = True, **kwargs):
        self._engine: Optional[Engine] = None
        self.eagle3_ngram = eagle3_ngram
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
        head_path, load_nextn = None, False
        if eagle3_head is not None:
            if kwargs.get("draft_model") is not None:
                raise ValueError("eagle3_head and draft_model cannot be combined")
            if not Path(eagle3_head).expanduser().is_file() and not Path(model_path).is_file():
                raise ValueError(f"Model path does not exist: {model_path}")  # llama_cpp.Llama's message
            # "ngram": n-gram copies without a head (nohead.py, unless a file of that name exists); a
            # GGUF as is; an HF checkpoint directory or a hub repo id: converted once, cached (hub.py)
            if eagle3_head in (NGRAM_ONLY, MTP) and not Path(eagle3_head).exists():
                head_path = eagle3_head
            else:
                head_path = resolve_head(eagle3_head, model_path)
            if head_path == MTP and eagle3_tree_width > 1:
                raise ValueError(f'eagle3_head="mtp" drafts chains only: use eagle3_tree_width=1, '
                                 f'got {eagle3_tree_width}')
            # raises before anything loads; a recurrent/hybrid target generates plainly (_attach_mtp)
            load_nextn = head_path == MTP and check_mtp_target(Path(model_path)) not in MTP_HYBRID_ARCHS
            # llama.cpp's attention without flash attention gives different results for a token
            # decoded alone and the same token inside a batch (measured on CPU: up to 1.7 in a
            # logit), so no batched verification could reproduce plain decoding bit for bit.
            # Flash attention is batch-invariant: speculative output equals plain decoding with it.
            if kwargs.setdefault("flash_attn", True) is not True:
                warnings.warn("flash_attn=False: llama.cpp's attention then depends on the batch size, so "
                              "speculative output may differ from plain decoding; use flash_attn=True for "
                              "identical output", stacklevel=2)
        with loading_nextn_layers() if load_nextn else contextlib.nullcontext():
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
            if head_path == NGRAM_ONLY:
                self._attach_ngram_only()
            elif head_path == MTP:
                self._attach_mtp()
            else:
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
        """The drafter the head GGUF's general.architecture names: `eagle3` (proposer.py on llama.cpp's
        graph, HeadRunner), `eagle3x` (proposer.py on this runtime's graph, HeadGraph: the variants
        llama.cpp's graph cannot run) or `dflash` (dflash.py), every input checked first (llama.cpp
        aborts the process on a failed assert)."""
        target = self._target_info()
        dflash = head_architecture(path) == "dflash"
        try:
            if dflash:
                if self.eagle3_tree_width > 1:
                    raise ValueError(f"DFlash head {path}: eagle3_tree_width={self.eagle3_tree_width}, but a DFlash "
                                     f"head drafts chains (one block per round) only: use eagle3_tree_width=1")
                dflash_config = check_dflash_gguf(path, target, self.eagle3_draft_max)
                layer_ids = list(dflash_config.target_layers)
            else:
                head = check_head_gguf(path, target)
                layer_ids = list(head.config.target_layers)
        except ConversionError as e:
            raise ValueError(f"{'DFlash' if dflash else 'EAGLE-3'} head {path} cannot be used with "
                             f"{self.model_path}: {e}") from None
        if self._cannot_roll_back():
            return
        capture = FeatureCapture(target.arch, layer_ids, target.n_embd, target.n_layer, capture_mode)
        capture.attach_to(self, n_seq_max=self.eagle3_tree_nodes if self.eagle3_tree_width > 1 else 1)
        if dflash:
            # the target's context (ctx_other) lends its token embedding / output matrix: made after
            # attach_to, which may have made the target's context again
            drafter = DFlashDrafter(path, dflash_config, self._ctx.ctx, target.n_embd, self._n_ctx, self.n_batch,
                                    self.context_params.n_threads, self.context_params.n_threads_batch,
                                    int(self.model_params.n_gpu_layers), catch_up_rows=self.n_batch)
            self._policy.costs.per_proposal = drafter.per_proposal
        elif head.variant:  # norm_output, fc_norm, 4-5 taps, q/k norms, biases: llama.cpp's graph cannot
            runner = core.HeadGraph(str(path), self.model_path, target.n_embd, self._n_ctx, self.n_batch,
                                    self.context_params.n_threads, [] if head.d2t is None else [int(x) for x in head.d2t],
                                    tree_width_max=self.eagle3_tree_width,
                                    tree_cells_max=self.eagle3_tree_width * self.eagle3_draft_max)
            drafter = Eagle3Proposer(runner, catch_up_rows=self.n_batch)
        else:
            ctx = context_address(self._ctx.ctx)
            runner = core.HeadRunner(str(path), ctx, self._n_ctx, self.n_batch, self.context_params.n_threads,
                                     self.context_params.n_threads_batch, int(self.model_params.n_gpu_layers),
                                     [] if head.d2t is None else [int(x) for x in head.d2t],
                                     tree_width_max=self.eagle3_tree_width,
                                     tree_cells_max=self.eagle3_tree_width * self.eagle3_draft_max)
            drafter = Eagle3Proposer(runner, catch_up_rows=self.n_batch)
        self._stack.callback(drafter.close)  # LIFO: the head goes before the target context
        engine = Engine(self, drafter, capture, self._policy, self.eagle3_draft_max, self.eagle3_p_min,
                        self.eagle3_tree_width, self.eagle3_tree_nodes,
                        ngram_max=self.eagle3_draft_max if self.eagle3_ngram else 0)
        if self.eagle3_tree_width > 1:
            engine.tree_batch = internals.LlamaBatch(n_tokens=self.eagle3_tree_nodes + 1, embd=0,
                                                     n_seq_max=self.eagle3_tree_nodes, verbose=False)
            self._stack.callback(engine.tree_batch.close)
        self._start(engine)

    def _cannot_roll_back(self) -> bool:
        """A recurrent/hybrid target's state cannot be rolled back per token: True, with a warning
        that generation is plain (no drafter is attached)."""
        if not (self._is_recurrent or self._is_hybrid):
            return False
        warnings.warn(f"{self.metadata.get('general.architecture')} is a recurrent/hybrid model: its state cannot "
                      f"be rolled back per token, so speculation is off and generation is plain", stacklevel=4)
        return True

    def _start(self, engine: Engine) -> None:
        """The engine runs from now on; the adaptive policy first measures its costs (calibration.py)."""
        self._engine = engine
        if self._policy.adaptive and self.eagle3_draft_max > 0:
            calibrate(engine)

    def _attach_mtp(self) -> None:
        """eagle3_head="mtp": the target's own NextN layer drafts (mtp.py); chains only."""
        if self._cannot_roll_back():
            return
        capture = NextnCapture(int(llama_cpp.llama_model_n_embd_out(self._model.model)))  # h rows' width
        capture.bind(self._ctx.ctx)
        drafter = MtpDrafter(self._model.model, self._ctx.ctx, capture.n_embd, self._n_ctx, self.n_batch,
                             self.context_params.n_threads, self.context_params.n_threads_batch,
                             catch_up_rows=self.n_batch)
        self._stack.callback(drafter.close)  # LIFO: the MTP context goes before the target's
        self._start(Engine(self, drafter, capture, self._policy, self.eagle3_draft_max, self.eagle3_p_min, 1, 0,
                           ngram_max=self.eagle3_draft_max if self.eagle3_ngram else 0))

    def close(self) -> None:
        if "_stack" in self.__dict__:  # __init__ may have raised before llama_cpp.Llama set it up
            super().close()

    # ---- public additions -----------------------------------------------------------

    def _attach_ngram_only(self) -> None:
        """eagle3_head="ngram": n-gram copies of the context, no head (nohead.py)."""
        if self.eagle3_draft_max == 0:
            raise ValueError('eagle3_head="ngram" drafts up to eagle3_draft_max tokens: use eagle3_draft_max >= 1')
        if self._cannot_roll_back():
            return
        self._policy = DraftPolicy(0, adaptive=self._policy.adaptive, graph_rebuilds=self._policy.graph_rebuilds)
        self._engine = Engine(self, NoHeadDrafter(), NoCapture(), self._policy, 0, self.eagle3_p_min, 1, 0,
                              ngram_max=self.eagle3_draft_max)
        calibrate(self._engine, rows_max=self.eagle3_draft_max + 1)

    @property
    def is_speculative(self) -> bool:
        return self._engine is not None

    @property
    def speculation_on(self) -> bool:
        """Whether the next round would draft (the adaptive policy may have switched speculation
        off, or handed generation to plain decoding for a stretch: fallback.py)."""
        return self._engine is not None and self.eagle3_draft_max > 0 and not self._engine.fallback.active and (
            self._policy.decide() != (False, 0))

    def speculative_stats(self) -> dict:
        """Counters since construction or reset_speculative_stats(): rounds, drafted, accepted,
        mean_accepted_length (tokens committed per verify, bonus included), acceptance_at (per draft
        position), seconds spent drafting, verifying, sampling and elsewhere in the loop, tokens
        decoded by the plain fallback, and the draft-length policy's current estimates (policy:
        alpha, decode_ms per row count, draft_step_ms, round_overhead_ms, the fallback's state)."""
        if self._engine is None:
            return {**SpeculativeStats().as_dict(), "policy": self._policy.snapshot()}
        engine = self._engine
        out = {**engine.stats.as_dict(),
               "policy": {**self._policy.snapshot(), **engine.fallback.snapshot(),
                          **(engine.ngram.snapshot() if engine.ngram is not None else {})}}
        if isinstance(engine.drafter, DFlashDrafter):  # one block decode per proposal
            out["head_decodes"] = engine.drafter.n_blocks
        return out

    def reset_speculative_stats(self) -> None:
        if self._engine is not None:
            self._engine.stats = SpeculativeStats()
            if isinstance(self._engine.drafter, DFlashDrafter):
                self._engine.drafter.n_blocks = 0

    def _bench_configure(self, policy: DraftPolicy, simulated: Optional[SimulatedAcceptance],
                         stats: SpeculativeStats, fallback: Fallback) -> None:
        """Benchmark only (bench_simulated.py): the draft policy of later rounds (a fixed chain or a
        calibrated adaptive one), its plain fallback's state, simulated acceptance (None: real
        verification) and the counters they add to. Chains only."""
        if simulated is not None and self.eagle3_tree_width > 1:
            raise ValueError("simulated acceptance is defined for chains only: use eagle3_tree_width=1")
        if policy.k_max > self.eagle3_draft_max:
            raise ValueError(f"a policy drafting up to {policy.k_max} needs eagle3_draft_max >= {policy.k_max}")
        policy.graph_rebuilds = self._policy.graph_rebuilds
        policy.costs.per_proposal = self._policy.costs.per_proposal  # a DFlash head's proposals
        self._policy = self._engine.policy = policy
        self._engine.simulated, self._engine.stats, self._engine.fallback = simulated, stats, fallback
        if simulated is not None:
            self._engine.ngram = None  # simulated acceptance is the head's; committed text is meaningless

    # ---- KV state: every change keeps the engine's invariants ---------------------------

    def reset(self) -> None:
        super().reset()
        if self._engine is not None:
            self._engine.drafter.reset()
            if self._engine.ngram is not None:
                self._engine.ngram.reset()

    def load_state(self, state) -> None:
        super().load_state(state)
        if self._engine is not None:
            # restored positions carry no features: keep the prefix the head knows
            self._engine.truncate(self.n_tokens)

    def eval(self, tokens: Sequence[int]) -> None:
        if self._engine is None:
            return super().eval(tokens)
        self._engine.decode(self._engine.resync() + list(tokens), 1)

    # ---- generation -----------------------------------------------------------------

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor: Optional[LogitsProcessorList] = None,
                 stopping_criteria: Optional[StoppingCriteriaList] = None,
                 grammar: Optional[LlamaGrammar] = None) -> Generator[int, Optional[Sequence[int]], None]:
        if self._engine is None:
            yield from super().generate(
                tokens, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temp,
                repeat_penalty=repeat_penalty, reset=reset, frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, penalize_nl=penalize_nl,
                logits_processor=logits_processor, stopping_criteria=stopping_criteria, grammar=grammar)
            return

        def start_sampler() -> None:  # llama-cpp-python's sampler chain, as its generate() makes it
            self._mirostat_mu = ctypes.c_float(2.0 * mirostat_tau)
            self._sampler = self._init_sampler(
                top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temp,
                repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, penalize_nl=penalize_nl,
                logits_processor=logits_processor, grammar=grammar)
        yield from self._engine.generate(tokens, reset, stopping_criteria, start_sampler)
