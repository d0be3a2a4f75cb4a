"""Draft-tree layout and tree acceptance (tree.py, verifier.accept_tree), without a model."""

from __future__ import annotations

from llama_eagle3.tree import DraftTree
from llama_eagle3.verifier import accept_chain, accept_tree

#            root
#          /      \
#   0:a(-0.2)   1:b(-1.0)
#    /     \         \
# 2:c(-.5) 3:d(-.9)  4:e(-1.5)
#    |
# 5:f(-.7)
TREE = DraftTree(tokens=[10, 11, 12, 13, 14, 15], parents=[-1, -1, 0, 0, 1, 2], depth=[1, 1, 2, 2, 2, 3],
                 scores=[-0.2, -1.0, -0.5, -0.9, -1.5, -0.7])


def test_row_sequences_give_every_row_the_leaves_below_it():
    assert TREE.leaves() == [3, 4, 5]
    seqs = TREE.row_sequences()
    assert seqs[0] == [0, 1, 2]               # the root: every leaf
    assert seqs[1] == [0, 2]                  # a: leaves d (seq 0) and f (seq 2)
    assert seqs[2] == [1]                     # b: leaf e
    assert seqs[3] == [2] and seqs[6] == [2]  # c, f
    assert seqs[4] == [0] and seqs[5] == [1]  # d, e


def test_depth_first_puts_the_top1_chain_first():
    t = TREE.depth_first()
    assert t.tokens == [10, 12, 15, 13, 11, 14]   # a c f | d | b e
    assert t.parents == [-1, 0, 1, 0, -1, 4]
    assert t.depth == [1, 2, 3, 2, 1, 2]
    assert all(t.parents[i] < i for i in range(len(t)))  # parents first: positions never decrease per sequence
    assert t.row_sequences()[1:4] == [[0, 1], [0], [0]]  # the first-child chain ends in leaf 0 (sequence 0)
    assert t.chain_prefix([0, 1, 2]) == 3
    assert t.chain_prefix([0, 3]) == 1
    assert t.chain_prefix([4, 5]) == 0


def scripted(samples: dict[int, int]):
    seen = []

    def sample_row(r: int) -> int:
        seen.append(r)
        return samples[r]
    return sample_row, seen


def test_accept_tree_follows_the_sampled_child():
    t = TREE.depth_first()
    # root samples b (node 4, row 5), b's row samples e (node 5, row 6), e's row samples 99: stop
    sample_row, seen = scripted({0: 11, 5: 14, 6: 99})
    assert accept_tree(sample_row, t) == ([11, 14, 99], [4, 5])
    assert seen == [0, 5, 6]
    # a sample no child carries ends the round at once
    sample_row, seen = scripted({0: 42})
    assert accept_tree(sample_row, t) == ([42], [])


def test_a_chain_tree_accepts_like_accept_chain():
    drafts = [5, 6, 7]
    for samples in ({0: 5, 1: 6, 2: 7, 3: 8}, {0: 5, 1: 9}, {0: 1}):
        a, _ = scripted(samples)
        b, _ = scripted(samples)
        committed, path = accept_tree(b, DraftTree.chain(drafts))
        assert committed == accept_chain(a, drafts)
        assert path == list(range(len(committed) - 1))
