// Where the target's hidden states are captured.
//
// EAGLE-3 reads three residual-stream states of the target at every position (an eagle3x head
// 3..5, head_graph.h); both paths below take any number of layer ids.
// Layer ids follow llama.cpp's GGUF key `eagle3.target_layers`: id L names the
// INPUT of layer L, which is the OUTPUT of layer L-1. Every llama.cpp architecture
// names its per-layer residual output `l_out-<il>`, so id L is tensor `l_out-<L-1>`.
//
// Two capture paths, same result (the tests compare them):
//   HookCapture    - a ggml eval callback installed in the target context's params.
//                    The scheduler asks it about every graph node (ask=true, a string
//                    compare) and hands it each selected tensor once computed
//                    (ask=false); it copies the rows with ggml_backend_tensor_get, which
//                    every backend (CPU, CUDA, Metal, ...) implements. Works on any
//                    architecture. After pause() it selects no node until the next
//                    begin(): the scheduler then computes each split whole, as without
//                    a callback (a decode whose states nobody reads).
//   builtin_*      - llama.cpp's own layer-input extraction. Only architectures whose
//                    graph sets t_layer_inp support it; asking others aborts the
//                    process, so Python decides which path to use before calling.
//
// Invariants:
//   - Rows arrive in batch order: one llama_decode may run several ubatches, each
//     appending its rows for every layer.
//   - Ids must be in [1, n_layer - 1]: the last layer's output is reduced to the
//     output rows, so it cannot give a state for every position.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

struct ggml_tensor;
struct llama_context;

class HookCapture {
public:
    HookCapture(const std::vector<int32_t> & layer_ids, int32_t n_embd);

    // ggml_backend_sched_eval_callback; user_data is this object.
    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);

    // Forget the rows of earlier decodes; capture from the next decode on.
    void begin();

    // Select no node (capture nothing, split nothing) until the next begin().
    void pause() { enabled_ = false; }

    bool enabled() const { return enabled_; }

    // Rows captured since begin(): out[r * n_layers*n_embd + k*n_embd + j] = layer k, row r.
    // Throws if the layers disagree on the row count or a tensor was unusable.
    int64_t take(std::vector<float> & out) const;

    int32_t n_embd() const { return n_embd_; }

private:
    bool on_tensor(ggml_tensor * t, bool ask);

    std::vector<std::string>        names_;  // "l_out-<L-1>" per layer, in layer_ids order
    std::vector<std::vector<float>> rows_;   // per layer, [n_rows * n_embd]
    int32_t                         n_embd_;
    std::string                     error_;
    bool                            enabled_ = true;
};

// llama.cpp's built-in extraction (see header comment for when it is allowed). Switching it
// makes llama.cpp reserve its scheduler again at the next decode (a few ms on a CPU).
void builtin_set(llama_context * ctx, const std::vector<int32_t> & layer_ids, bool on);
void builtin_read(llama_context * ctx, const std::vector<int32_t> & layer_ids, int32_t n_embd,
                  int64_t n_rows, std::vector<float> & out);
