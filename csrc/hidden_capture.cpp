#include "hidden_capture.h"

#include "ggml.h"
#include "ggml-backend.h"
#include "llama_ext_api.h"

#include <cstring>
#include <stdexcept>

HookCapture::HookCapture(const std::vector<int32_t> & layer_ids, int32_t n_embd)
    : rows_(layer_ids.size()), n_embd_(n_embd) {
    for (int32_t id : layer_ids) {
        if (id < 1) {
            throw std::invalid_argument("capture layer id must be >= 1, got " + std::to_string(id));
        }
        names_.push_back("l_out-" + std::to_string(id - 1));
    }
}

bool HookCapture::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    return static_cast<HookCapture *>(user_data)->on_tensor(t, ask);
}

bool HookCapture::on_tensor(ggml_tensor * t, bool ask) {
    if (!enabled_) {
        return !ask;  // select nothing; an unselected node never stops the computation
    }
    const char * name = ggml_get_name(t);
    size_t k = 0;
    while (k < names_.size() && names_[k] != name) {
        ++k;
    }
    if (ask) {
        return k < names_.size();
    }
    if (k == names_.size()) {
        return true;  // a node we did not select (the scheduler's split end): keep going
    }
    if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t) || t->ne[0] != n_embd_) {
        error_ = std::string("tensor ") + name + " is not a contiguous F32 [n_embd, n_tokens] tensor";
        return true;
    }
    const size_t n = (size_t) ggml_nelements(t);
    std::vector<float> & dst = rows_[k];
    const size_t off = dst.size();
    dst.resize(off + n);
    ggml_backend_tensor_get(t, dst.data() + off, 0, n * sizeof(float));
    return true;
}

void HookCapture::begin() {
    enabled_ = true;
    for (auto & r : rows_) {
        r.clear();
    }
    error_.clear();
}

int64_t HookCapture::take(std::vector<float> & out) const {
    if (!error_.empty()) {
        throw std::runtime_error("hidden-state capture failed: " + error_);
    }
    const size_t n_layers = rows_.size();
    const int64_t n_rows = (int64_t) (rows_[0].size() / n_embd_);
    for (size_t k = 0; k < n_layers; ++k) {
        if ((int64_t) (rows_[k].size() / n_embd_) != n_rows) {
            throw std::runtime_error("hidden-state capture saw " + std::to_string(rows_[k].size() / n_embd_) +
                                     " rows for " + names_[k] + " but " + std::to_string(n_rows) + " for " +
                                     names_[0] + ": the graph does not produce this layer for every token");
        }
    }
    out.resize((size_t) n_rows * n_layers * n_embd_);
    for (int64_t r = 0; r < n_rows; ++r) {
        for (size_t k = 0; k < n_layers; ++k) {
            std::memcpy(out.data() + ((size_t) r * n_layers + k) * n_embd_,
                        rows_[k].data() + (size_t) r * n_embd_, (size_t) n_embd_ * sizeof(float));
        }
    }
    return n_rows;
}

void builtin_set(llama_context * ctx, const std::vector<int32_t> & layer_ids, bool on) {
    for (int32_t id : layer_ids) {
        llama_set_embeddings_layer_inp(ctx, (uint32_t) id, on);
    }
}

void builtin_read(llama_context * ctx, const std::vector<int32_t> & layer_ids, int32_t n_embd,
                  int64_t n_rows, std::vector<float> & out) {
    const size_t n_layers = layer_ids.size();
    out.resize((size_t) n_rows * n_layers * n_embd);
    for (size_t k = 0; k < n_layers; ++k) {
        const float * src = llama_get_embeddings_layer_inp(ctx, (uint32_t) layer_ids[k]);
        if (src == nullptr) {
            throw std::runtime_error("llama.cpp extracted no input for layer " + std::to_string(layer_ids[k]));
        }
        for (int64_t r = 0; r < n_rows; ++r) {
            std::memcpy(out.data() + ((size_t) r * n_layers + k) * n_embd, src + (size_t) r * n_embd,
                        (size_t) n_embd * sizeof(float));
        }
    }
}
