"""Draft trees and how one is laid out for verification ("where the draft tree is verified").

The head builds the tree (HeadRunner.draft_tree, csrc/head_runner.cpp: EAGLE-2 dynamic
expansion by cumulative draft log-probability, reranked to a node budget). Here:

    nodes 0..m-1 in depth order; parents[i] == -1: a child of the root, the target's next
    token t_n; depth[i] >= 1; scores[i]: draft log-probability of the path root -> i.

One target batch verifies it:

    row 0      t_n       at position n              sequences: all leaves'
    row 1 + i  node i    at position n + depth[i]   sequences: the leaves below node i

Leaf j owns sequence j (leaf 0 the committed sequence 0); the committed context is copied
into every leaf's sequence first (llama_memory_seq_cp), so every row attends to the
context and to exactly its ancestors. llama.cpp requires a unified KV cache for this
(coupled sequences) and at least n_leaves sequences in the context.

Cell order: llama.cpp's flash attention sums over KV cells in cell order, and plain decoding
holds a sequence's cells in position order; a kept cell out of that order changes the
rounding and, at a near tie, a greedy token. The batch is therefore laid out depth first,
most likely child first (depth_first()): the head's top-1 chain is rows 1, 2, ... right after
the root's cell, and leaf 0 ends it. After verification the engine keeps only the accepted
nodes that continue that chain (contiguous cells, sequence 0); accepted tokens past a branch
are committed but re-evaluated in the next decode (their cells were not in order).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DraftTree:
    tokens: list[int]
    parents: list[int]
    depth: list[int]
    scores: list[float]

    @classmethod
    def chain(cls, tokens: list[int]) -> "DraftTree":
        n = len(tokens)
        return cls(list(tokens), list(range(-1, n - 1)), list(range(1, n + 1)), [0.0] * n)

    @classmethod
    def comb(cls, width: int, nodes: int, depth: int) -> "DraftTree":
        """A stand-in tree of `nodes` nodes for timing a verify (calibration.calibrate): `width`
        children under the first node of each level down to `depth`, then more children of the
        root. The shape of a confident EAGLE-2 tree: the top-1 chain with alternatives along it."""
        parents: list[int] = []
        depths: list[int] = []
        parent = -1
        for level in range(1, depth + 1):
            first = len(parents)
            for _ in range(min(width, nodes - len(parents))):
                parents.append(parent)
                depths.append(level)
            parent = first
        while len(parents) < nodes:
            parents.append(-1)
            depths.append(1)
        return cls(list(range(1, nodes + 1)), parents, depths, [0.0] * nodes).depth_first()

    def __len__(self) -> int:
        return len(self.tokens)

    def depth_first(self) -> "DraftTree":
        """The same tree with nodes in depth-first order, children by descending score."""
        kids = self.children()
        order: list[int] = []
        stack = sorted(kids[0], key=lambda i: self.scores[i])  # best child on top
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(sorted(kids[node + 1], key=lambda i: self.scores[i]))
        new = {old: j for j, old in enumerate(order)}
        return DraftTree([self.tokens[i] for i in order], [new.get(self.parents[i], -1) for i in order],
                         [self.depth[i] for i in order], [self.scores[i] for i in order])

    def chain_prefix(self, path: list[int]) -> int:
        """How many leading nodes of an accepted path are nodes 0, 1, 2, ... (the first-child chain
        of a depth_first() tree, whose cells follow the root's in order)."""
        j = 0
        while j < len(path) and path[j] == j:
            j += 1
        return j

    def children(self) -> list[list[int]]:
        """children()[r]: the nodes whose parent is batch row r (row 0 = root, row 1 + i = node i)."""
        kids: list[list[int]] = [[] for _ in range(len(self) + 1)]
        for i, p in enumerate(self.parents):
            kids[p + 1].append(i)
        return kids

    def leaves(self) -> list[int]:
        has_child = set(self.parents)
        return [i for i in range(len(self)) if i not in has_child]

    def row_sequences(self) -> list[list[int]]:
        """Sequence ids of every batch row: leaf j's sequence is j; a row carries the sequence
        of every leaf below it (the root: all of them)."""
        leaves = self.leaves()
        rows: list[list[int]] = [list(range(len(leaves)))] + [[] for _ in self.tokens]
        for seq, leaf in enumerate(leaves):
            node = leaf
            while node >= 0:
                rows[node + 1].append(seq)
                node = self.parents[node]
        return [sorted(r) for r in rows]

    def path_to(self, node: int) -> list[int]:
        """Nodes from the root's child down to node."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]
