// The EAGLE-3 head in a llama.cpp context of its own ("where drafts are made").
//
// The head GGUF (arch "eagle3") has two graphs: ENCODE runs fc over the three
// concatenated target states, f[P] = [low|mid|high] (3*Ht) -> g[P] (Hd); DECODE runs
// the one-layer decoder over (token, g) pairs and outputs logits over the target
// vocabulary (-inf outside the draft vocabulary when the head has d2t) and the
// pre-norm hidden state h.
//
// Pairing convention (the same as llama.cpp's common/speculative.cpp):
//   at head KV position P the decoder consumes (token[P+1], g[P]) with RoPE position P.
//   The pair for the last target position is therefore deferred until the token after
//   it is known (the target's next sampled token). A chain draft step then feeds
//   (draft token d_k, h of the previous step) at the next position.
//
// llama.cpp's eagle3 decoder graph computes logits and h for every row of the ubatch and
// ignores the output mask; llama.cpp then copies the first n_outputs rows. A decode whose
// outputs are read therefore marks every row of its (last) ubatch as an output, so that
// output row i is batch row i (marking only the last row would hand back row 0's values).
//
// KV invariant kept by the caller: positions [0, n_valid) hold pairs built from true
// target features; everything from n_valid on is speculative and is dropped
// (seq_rm) by the next extend()/draft() call that starts at n_valid. Sequence 0 is the
// committed context and chain drafts; a tree draft expands its nodes in sequences
// 1..2*tree_width (each expanded node's sequence = its parent's cells + its own; two sets
// alternate by depth so a level reads its parents' sequences while writing its own) and
// removes them all before it returns.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

struct llama_context;
struct llama_model;
struct llama_batch_ext;

// owners of llama.cpp objects: a constructor that throws half-way frees what it made
struct LlamaModelFree { void operator()(llama_model * m) const; };
struct LlamaContextFree { void operator()(llama_context * c) const; };
struct LlamaBatchExtFree { void operator()(llama_batch_ext * b) const; };

struct HeadParams {
    std::string path;
    llama_context * target_ctx = nullptr;  // supplies tok_embd / lm_head when the head has none
    int32_t n_ctx = 0;
    int32_t n_batch = 512;
    int32_t n_threads = 1;
    int32_t n_threads_batch = 1;
    int32_t n_gpu_layers = 0;
    int32_t tree_width_max = 1;  // widest tree draft_tree() may be asked for (1: chains only)
    int32_t tree_cells_max = 0;  // KV cells a tree may hold beyond the committed context
};

// An EAGLE-2 dynamic draft tree. Nodes are in depth order (a parent before its children);
// node i holds target token tokens[i] at depth depth[i] (1 = the token after next_token),
// its parent is node parents[i] (-1: next_token, the root) and scores[i] is the draft
// log-probability of the path root -> i (sum of the head's log-softmax over the draft
// vocabulary along the path).
struct DraftTree {
    std::vector<int32_t> tokens;
    std::vector<int32_t> parents;
    std::vector<int32_t> depth;
    std::vector<float> scores;
};

// The n_nodes best candidates of `all` (every candidate in creation = depth order), renumbered in
// that order; ties go to the earlier (shallower) candidate, so every kept node's parent is kept.
DraftTree keep_best_nodes(const DraftTree & all, int32_t n_nodes);

class HeadRunner {
public:
    // draft_to_target: absolute target id of every draft id (empty: the draft vocabulary
    // is the target vocabulary).
    HeadRunner(const HeadParams & params, std::vector<int32_t> draft_to_target);
    HeadRunner(const HeadRunner &) = delete;
    HeadRunner & operator=(const HeadRunner &) = delete;

    int32_t n_embd() const { return n_embd_; }          // Hd
    int32_t n_embd_enc() const { return n_embd_enc_; }  // 3 * Ht
    int32_t n_ctx() const { return n_ctx_; }
    std::vector<int32_t> target_layers() const;

    // features [n, 3*Ht] -> g [n, Hd]
    void encode(const float * features, int64_t n, std::vector<float> & g);

    // Writes pairs (tokens[i], g[i]) at positions pos0 + i, dropping KV from pos0 on.
    void extend(const int32_t * tokens, const float * g, int64_t n, int32_t pos0);

    // extend() with the last pair's outputs kept, then up to n_max chain steps; stops
    // early when the head's top-1 probability (within the draft vocabulary) falls below p_min.
    // Returns target vocabulary ids.
    std::vector<int32_t> draft(const int32_t * tokens, const float * g, int64_t n, int32_t pos0,
                      int32_t n_max, float p_min);

    // extend() with the last pair's outputs kept, then a tree of at most n_nodes nodes and
    // `depth` levels: each level expands the `width` best nodes of the level before (by score)
    // in one decode, each into its `width` most likely children; the n_nodes best candidates
    // of all levels are kept (a child never scores above its parent, so every kept node's
    // ancestors are kept). width 1 and n_nodes == depth is draft() without p_min.
    DraftTree draft_tree(const int32_t * tokens, const float * g, int64_t n, int32_t pos0,
                         int32_t depth, int32_t width, int32_t n_nodes);

    // Every row's draft-vocabulary logits [n, Vd] and pre-norm state [n, Hd] for pairs at
    // pos0 + i (reference checks; KV from pos0 on is replaced).
    void forward(const int32_t * tokens, const float * g, int64_t n, int32_t pos0,
                 std::vector<float> & logits, std::vector<float> & prenorm);

    void truncate(int32_t pos);  // drop KV positions >= pos

private:
    // which rows are read afterwards: none (extend), the last (draft), every row (forward)
    enum class Read { none, last, all };
    // Decodes in n_batch chunks; with Read::last / Read::all, output row i of the final chunk is its row i.
    void decode_pairs(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, Read read);
    void process(int type, const char * what);
    // top-1 draft token (target id) of an output row; *prob: its probability, if asked for
    int32_t top1(int32_t batch_idx, float * prob) const;
    // the k most likely draft tokens of an output row: (target id, log-probability), best first
    std::vector<std::pair<int32_t, float>> topk(int32_t batch_idx, int32_t k) const;

    // declared in the order they are made: destroyed batch, context, model
    std::unique_ptr<llama_model, LlamaModelFree>         model_;
    std::unique_ptr<llama_context, LlamaContextFree>     ctx_;
    std::unique_ptr<llama_batch_ext, LlamaBatchExtFree>  batch_;
    std::vector<int32_t> d2t_;
    int32_t n_embd_ = 0, n_embd_enc_ = 0, n_vocab_ = 0, n_ctx_ = 0, n_batch_ = 0;
    int32_t tree_width_max_ = 1, tree_cells_max_ = 0;
};
