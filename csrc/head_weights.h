// An eagle3x head's hyperparameters, weights and KV cache in a ggml backend buffer (head_graph.h).
// Weights come from the head GGUF (convert/eagle3_convert/gguf_io.py, arch eagle3x); the token
// embedding and the output matrix, when the head has none, from the target's GGUF
// (token_embd.weight; output.weight, else the tied token_embd.weight). Every problem raises
// std::runtime_error naming the file: nothing here reaches a ggml assert on a bad file.
#pragma once

#include "ggml-backend.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

struct HeadHParams {
    int32_t hd = 0, ff = 0, nh = 0, nkv = 0, hdim = 0, ht = 0;
    float eps = 1e-6f, theta = 10000.0f;
    bool norm_before_residual = false, norm_before_fc = false, norm_output = false, fc_norm = false;
    // RoPE (ggml_rope_ext's arguments): plain, linear, yarn; llama3 through the rope_freqs tensor
    float freq_scale = 1.0f, ext_factor = 0.0f, attn_factor = 1.0f;
    int32_t n_ctx_orig = 0;
};

struct HeadWeights {
    HeadHParams hp;
    std::vector<int32_t> layers;                          // target_layers, in fc's column order
    std::map<std::string, ggml_tensor *> w;               // by head GGUF name; optional ones may be absent
    ggml_tensor * cache_k = nullptr, * cache_v = nullptr;  // F32 [head_dim, n_kv_heads, n_cells]
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;

    HeadWeights() = default;
    ~HeadWeights();
    HeadWeights(const HeadWeights &) = delete;
    HeadWeights & operator=(const HeadWeights &) = delete;

    ggml_tensor * get(const char * name) const;  // nullptr when absent
};

// Fills `out` (empty): reads the files, checks every shape against the hyperparameters and the
// target's width n_target_embd, allocates weights and a KV cache of n_cells cells on `backend`.
void load_head_weights(HeadWeights & out, const std::string & head_path, const std::string & target_path,
                       int32_t n_target_embd, ggml_backend_t backend, int32_t n_cells);
