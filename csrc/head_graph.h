// The EAGLE-3 head in a ggml graph of this runtime's own, for the heads llama.cpp's
// eagle3 graph cannot run: GGUF arch "eagle3x" (convert/eagle3_convert/gguf_io.py) with
// 3..5 taps, fc_norm (one RMSNorm per tap before fc), norm_output (the state fed to the
// next step is norm(h)), per-head q/k norms before RoPE, attention / MLP biases. The math
// is eagle3_convert/reference.py's.
//
// Same operations and pairing convention as HeadRunner (head_runner.h), chains and trees: row i
// of a decode consumes (token[i], g[i]) at RoPE position pos0 + i; KV from pos0 on is
// replaced. The state a step hands on (the `prenorm` of forward()) is next_state(h): h, or
// norm(h) with norm_output.
//
// Weights: head_weights.h (the head GGUF; the token embedding and the output matrix, when the
// head has none, from the target's GGUF). Runs on ggml's CPU backend (weights, KV cache and graph
// in host memory).
// The KV cache is F32 [head_dim, n_kv_heads, n_ctx] for K (after RoPE) and V; cell p holds
// position p. A decode at pos0 drops every position >= pos0; one at or before the first kept
// position (or into an empty KV) starts the sequence at pos0, as llama.cpp lets a sequence start
// anywhere; one past the last kept position is refused (std::out_of_range).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct HeadGraphParams {
    std::string head_path;
    std::string target_path;  // read only when the head lacks token_embd / output
    int32_t n_target_embd = 0;  // Ht, checked against the head
    int32_t n_ctx = 0;
    int32_t n_batch = 512;
    int32_t n_threads = 1;
    int32_t tree_width_max = 1;  // widest tree draft_tree() may be asked for (1: chains only)
    int32_t tree_cells_max = 0;  // KV cells a tree may hold beyond the committed context
};

struct DraftTree;

class HeadGraph {
public:
    HeadGraph(const HeadGraphParams & params, std::vector<int32_t> draft_to_target);
    ~HeadGraph();
    HeadGraph(const HeadGraph &) = delete;
    HeadGraph & operator=(const HeadGraph &) = delete;

    int32_t n_embd() const;
    int32_t n_embd_enc() const;
    int32_t n_ctx() const;
    std::vector<int32_t> target_layers() const;

    // features [n, n_taps*Ht] -> g [n, Hd]
    void encode(const float * features, int64_t n, std::vector<float> & g);
    void extend(const int32_t * tokens, const float * g, int64_t n, int32_t pos0);
    // extend, then up to n_max chain steps; stops when the top-1 draft probability < p_min
    std::vector<int32_t> draft(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, int32_t n_max,
                               float p_min);
    // HeadRunner::draft_tree (head_runner.h), the tree's nodes masked to their ancestors
    DraftTree draft_tree(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, int32_t depth, int32_t width,
                         int32_t n_nodes);
    // every row's draft-vocabulary logits [n, Vd] and next state [n, Hd] (n <= n_batch)
    void forward(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, std::vector<float> & logits,
                 std::vector<float> & state);
    void truncate(int32_t pos);

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};
