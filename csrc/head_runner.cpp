#include "head_runner.h"

#include "llama.h"
#include "llama_ext_api.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

void LlamaModelFree::operator()(llama_model * m) const { llama_model_free(m); }
void LlamaContextFree::operator()(llama_context * c) const { llama_free(c); }
void LlamaBatchExtFree::operator()(llama_batch_ext * b) const { llama_batch_ext_free(b); }

HeadRunner::HeadRunner(const HeadParams & p, std::vector<int32_t> draft_to_target) : d2t_(std::move(draft_to_target)) {
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = p.n_gpu_layers;
    model_.reset(llama_model_load_from_file(p.path.c_str(), mparams));
    if (!model_) {
        throw std::runtime_error("llama.cpp could not load the EAGLE-3 head " + p.path);
    }
    if (p.tree_width_max < 1 || p.tree_cells_max < 0) {
        throw std::invalid_argument("tree_width_max must be >= 1 and tree_cells_max >= 0");
    }
    tree_width_max_ = p.tree_width_max;
    tree_cells_max_ = p.tree_width_max > 1 ? p.tree_cells_max : 0;
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t) (p.n_ctx + tree_cells_max_);
    cparams.n_batch = (uint32_t) p.n_batch;
    cparams.n_ubatch = (uint32_t) p.n_batch;
    cparams.n_seq_max = (uint32_t) (tree_width_max_ > 1 ? 1 + 2 * tree_width_max_ : 1);
    cparams.kv_unified = true;  // tree sequences share the committed context's cells
    cparams.n_threads = p.n_threads;
    cparams.n_threads_batch = p.n_threads_batch;
    cparams.ctx_other = p.target_ctx;
    cparams.no_perf = true;
    ctx_.reset(llama_init_from_model(model_.get(), cparams));
    if (!ctx_) {
        throw std::runtime_error("llama.cpp could not create a context for the EAGLE-3 head " + p.path);
    }
    // pre-norm hidden states: the encoder's g and the decoder's h, for output rows only
    llama_set_embeddings_nextn(ctx_.get(), true, /*masked=*/true);
    batch_.reset(llama_batch_ext_init(ctx_.get()));

    n_embd_ = llama_model_n_embd(model_.get());
    n_embd_enc_ = (int32_t) llama_model_target_layer_ids_n(model_.get()) * llama_model_n_embd(llama_get_model(p.target_ctx));
    n_vocab_ = llama_vocab_n_tokens(llama_model_get_vocab(model_.get()));
    n_ctx_ = (int32_t) llama_n_ctx(ctx_.get()) - tree_cells_max_;  // positions; the rest is room for trees
    n_batch_ = (int32_t) llama_n_batch(ctx_.get());
    for (int32_t t : d2t_) {
        if (t < 0 || t >= n_vocab_) {
            throw std::invalid_argument("d2t maps to target id " + std::to_string(t) + " outside the vocabulary");
        }
    }
}

std::vector<int32_t> HeadRunner::target_layers() const {
    const int32_t * ids = llama_model_target_layer_ids(model_.get());
    return std::vector<int32_t>(ids, ids + llama_model_target_layer_ids_n(model_.get()));
}

void HeadRunner::process(int type, const char * what) {
    const int32_t rc = llama_process(ctx_.get(), (llama_process_type) type, batch_.get());
    if (rc != 0) {
        throw std::runtime_error(std::string("EAGLE-3 head ") + what + " failed (llama_process returned " +
                                 std::to_string(rc) + ")");
    }
}

void HeadRunner::encode(const float * features, int64_t n, std::vector<float> & g) {
    g.resize((size_t) n * n_embd_);
    // the encoder is per-token: chunk freely. Positions are placeholders, but llama.cpp's
    // batch validation wants them to continue the sequence in memory.
    const llama_pos pos_base = llama_memory_seq_pos_max(llama_get_memory(ctx_.get()), 0) + 1;
    for (int64_t i = 0; i < n; i += n_batch_) {
        const int64_t m = std::min<int64_t>(n_batch_, n - i);
        llama_batch_ext_clear(batch_.get());
        for (int64_t j = 0; j < m; ++j) {
            llama_embd e = {features + (size_t) (i + j) * n_embd_enc_, 1, (size_t) n_embd_enc_};
            const int32_t idx = llama_batch_ext_add_embd(batch_.get(), 0, e);
            const llama_pos pos = pos_base + (llama_pos) j;
            if (idx < 0 || !llama_batch_ext_set_pos(batch_.get(), idx, &pos) ||
                !llama_batch_ext_set_output_logits(batch_.get(), idx, true)) {
                throw std::runtime_error("could not build the EAGLE-3 encoder batch");
            }
        }
        process(LLAMA_PROCESS_TYPE_ENCODE, "encode");
        const float * out = llama_get_embeddings_nextn(ctx_.get());
        if (out == nullptr) {
            throw std::runtime_error("EAGLE-3 encoder produced no output");
        }
        std::memcpy(g.data() + (size_t) i * n_embd_, out, (size_t) m * n_embd_ * sizeof(float));
    }
}

void HeadRunner::truncate(int32_t pos) {
    llama_memory_seq_rm(llama_get_memory(ctx_.get()), 0, std::max<int32_t>(pos, 0), -1);
}

void HeadRunner::decode_pairs(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, Read read) {
    if (pos0 < 0 || pos0 + n > n_ctx_) {
        throw std::out_of_range("EAGLE-3 head positions [" + std::to_string(pos0) + ", " + std::to_string(pos0 + n) +
                                ") exceed its context of " + std::to_string(n_ctx_));
    }
    if (read == Read::all && n > n_batch_) {
        throw std::invalid_argument("forward() takes at most n_batch rows");
    }
    truncate(pos0);
    for (int64_t i = 0; i < n; i += n_batch_) {
        const int64_t m = std::min<int64_t>(n_batch_, n - i);
        const bool read_chunk = read != Read::none && i + m == n;  // see the header: every row or none
        llama_batch_ext_clear(batch_.get());
        for (int64_t j = 0; j < m; ++j) {
            const int64_t r = i + j;
            if (tokens[r] < 0 || tokens[r] >= n_vocab_) {
                throw std::invalid_argument("token id " + std::to_string(tokens[r]) + " outside the vocabulary");
            }
            const int32_t idx = llama_batch_ext_add_token(batch_.get(), 0, tokens[r]);
            const llama_pos pos = pos0 + (llama_pos) r;
            llama_embd e = {g + (size_t) r * n_embd_, 1, (size_t) n_embd_};
            if (idx < 0 || !llama_batch_ext_set_pos(batch_.get(), idx, &pos) || !llama_batch_ext_set_embd_token(batch_.get(), idx, e)) {
                throw std::runtime_error("could not build the EAGLE-3 decoder batch");
            }
            if (read_chunk || r == n - 1) {
                llama_batch_ext_set_output_logits(batch_.get(), idx, true);
            }
        }
        process(LLAMA_PROCESS_TYPE_DECODE, "decode");
    }
}

void HeadRunner::extend(const int32_t * tokens, const float * g, int64_t n, int32_t pos0) {
    if (n > 0) {
        decode_pairs(tokens, g, n, pos0, Read::none);
    } else {
        truncate(pos0);
    }
}

int32_t HeadRunner::top1(int32_t batch_idx, float * prob) const {
    const float * logits = llama_get_logits_ith(ctx_.get(), batch_idx);
    if (logits == nullptr) {
        throw std::runtime_error("EAGLE-3 head produced no logits");
    }
    const int32_t n = d2t_.empty() ? n_vocab_ : (int32_t) d2t_.size();
    auto id = [&](int32_t i) { return d2t_.empty() ? i : d2t_[i]; };
    int32_t best = 0;
    float best_logit = logits[id(0)];
    for (int32_t i = 1; i < n; ++i) {
        const float l = logits[id(i)];
        if (l > best_logit) {
            best_logit = l;
            best = i;
        }
    }
    if (prob != nullptr) {
        double sum = 0.0;
        for (int32_t i = 0; i < n; ++i) {
            sum += std::exp((double) (logits[id(i)] - best_logit));
        }
        *prob = (float) (1.0 / sum);
    }
    return id(best);
}

std::vector<std::pair<int32_t, float>> HeadRunner::topk(int32_t batch_idx, int32_t k) const {
    const float * logits = llama_get_logits_ith(ctx_.get(), batch_idx);
    if (logits == nullptr) {
        throw std::runtime_error("EAGLE-3 head produced no logits");
    }
    const int32_t n = d2t_.empty() ? n_vocab_ : (int32_t) d2t_.size();
    auto id = [&](int32_t i) { return d2t_.empty() ? i : d2t_[i]; };
    float best = -INFINITY;
    for (int32_t i = 0; i < n; ++i) {
        best = std::max(best, logits[id(i)]);
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n; ++i) {
        sum += std::exp((double) (logits[id(i)] - best));
    }
    const float log_z = best + (float) std::log(sum);
    std::vector<int32_t> idx(n);
    for (int32_t i = 0; i < n; ++i) {
        idx[i] = i;
    }
    k = std::min(k, n);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int32_t a, int32_t b) { return logits[id(a)] > logits[id(b)]; });
    std::vector<std::pair<int32_t, float>> out;
    for (int32_t i = 0; i < k; ++i) {
        out.emplace_back(id(idx[i]), logits[id(idx[i])] - log_z);
    }
    return out;
}

DraftTree HeadRunner::draft_tree(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, int32_t depth,
                                 int32_t width, int32_t n_nodes) {
    if (n <= 0) {
        throw std::invalid_argument("draft_tree() needs at least one (token, g) pair");
    }
    if (width < 1 || width > tree_width_max_) {
        throw std::invalid_argument("tree width " + std::to_string(width) + " outside 1.." + std::to_string(tree_width_max_) +
                                    " (the head was made for trees up to that width)");
    }
    if (width > 1 && width * depth > tree_cells_max_) {
        throw std::invalid_argument("a tree of width " + std::to_string(width) + " and depth " + std::to_string(depth) +
                                    " needs more than the " + std::to_string(tree_cells_max_) + " KV cells reserved for trees");
    }
    depth = std::min<int32_t>(depth, n_ctx_ - (pos0 + (int32_t) n));
    decode_pairs(tokens, g, n, pos0, Read::last);
    DraftTree all;  // every candidate, in creation (= depth) order
    std::vector<int32_t> seq;       // sequence of each candidate that was expanded (-1: not expanded)
    std::vector<int32_t> src;       // which stored state h a candidate's pair feeds
    std::vector<std::vector<float>> states;
    auto add_children = [&](int32_t row, int32_t parent, int32_t d) {
        const float * h = llama_get_embeddings_nextn_ith(ctx_.get(), row);
        if (h == nullptr) {
            throw std::runtime_error("EAGLE-3 head produced no pre-norm state");
        }
        states.emplace_back(h, h + n_embd_);
        const float base = parent < 0 ? 0.0f : all.scores[parent];
        for (const auto & [t, lp] : topk(row, width)) {
            all.tokens.push_back(t);
            all.parents.push_back(parent);
            all.depth.push_back(d);
            all.scores.push_back(base + lp);
            seq.push_back(-1);
            src.push_back((int32_t) states.size() - 1);
        }
    };
    if (depth >= 1) {
        add_children(-1, -1, 1);
    }
    llama_memory_t mem = llama_get_memory(ctx_.get());
    size_t level_begin = 0;
    for (int32_t d = 2; d <= depth; ++d) {
        std::vector<int32_t> level;
        for (size_t i = level_begin; i < all.tokens.size(); ++i) {
            level.push_back((int32_t) i);
        }
        level_begin = all.tokens.size();
        const int32_t m = std::min<int32_t>(width, (int32_t) level.size());
        std::partial_sort(level.begin(), level.begin() + m, level.end(),
                          [&](int32_t a, int32_t b) { return all.scores[a] > all.scores[b]; });
        const int32_t seq_base = d % 2 == 0 ? 1 : 1 + width;  // alternate with the parents' set
        llama_batch_ext_clear(batch_.get());
        const llama_pos pos = pos0 + (llama_pos) n + d - 2;
        for (int32_t j = 0; j < m; ++j) {
            const int32_t x = level[j];
            const llama_seq_id s = width == 1 ? 0 : seq_base + j;  // a chain stays in sequence 0
            if (s != 0) {
                llama_memory_seq_rm(mem, s, -1, -1);
                llama_memory_seq_cp(mem, all.parents[x] < 0 ? 0 : seq[all.parents[x]], s, -1, -1);
            }
            seq[x] = s;
            const std::vector<float> & h = states[src[x]];
            llama_embd e = {h.data(), 1, (size_t) n_embd_};
            const int32_t idx = llama_batch_ext_add_token(batch_.get(), s, all.tokens[x]);
            if (idx < 0 || !llama_batch_ext_set_pos(batch_.get(), idx, &pos) ||
                !llama_batch_ext_set_embd_token(batch_.get(), idx, e) ||
                !llama_batch_ext_set_output_logits(batch_.get(), idx, true)) {
                throw std::runtime_error("could not build the EAGLE-3 tree batch");
            }
        }
        process(LLAMA_PROCESS_TYPE_DECODE, "tree decode");
        for (int32_t j = 0; j < m; ++j) {
            add_children(j, level[j], d);
        }
    }
    for (llama_seq_id s = 1; s <= 2 * width && width > 1; ++s) {
        llama_memory_seq_rm(mem, s, -1, -1);
    }
    return keep_best_nodes(all, n_nodes);
}

std::vector<int32_t> HeadRunner::draft(const int32_t * tokens, const float * g, int64_t n, int32_t pos0,
                                       int32_t n_max, float p_min) {
    std::vector<int32_t> res;
    if (n <= 0) {
        throw std::invalid_argument("draft() needs at least one (token, g) pair");
    }
    n_max = std::min<int32_t>(n_max, n_ctx_ - (pos0 + (int32_t) n));
    decode_pairs(tokens, g, n, pos0, Read::last);
    int32_t pos = pos0 + (int32_t) n;
    int32_t row = -1;  // the last output row of the latest decode
    std::vector<float> h(n_embd_);
    while ((int32_t) res.size() < n_max) {
        float p = 1.0f;
        const int32_t t = top1(row, p_min > 0.0f ? &p : nullptr);
        if (p < p_min) {
            break;
        }
        res.push_back(t);
        if ((int32_t) res.size() == n_max) {
            break;
        }
        const float * prenorm = llama_get_embeddings_nextn_ith(ctx_.get(), row);
        if (prenorm == nullptr) {
            throw std::runtime_error("EAGLE-3 head produced no pre-norm state");
        }
        std::memcpy(h.data(), prenorm, (size_t) n_embd_ * sizeof(float));
        decode_pairs(&t, h.data(), 1, pos, Read::last);
        ++pos;
    }
    return res;
}

void HeadRunner::forward(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, std::vector<float> & logits,
                         std::vector<float> & prenorm) {
    decode_pairs(tokens, g, n, pos0, Read::all);
    const int32_t nd = d2t_.empty() ? n_vocab_ : (int32_t) d2t_.size();
    logits.resize((size_t) n * nd);
    prenorm.resize((size_t) n * n_embd_);
    for (int64_t r = 0; r < n; ++r) {
        const float * l = llama_get_logits_ith(ctx_.get(), (int32_t) r);
        const float * h = llama_get_embeddings_nextn_ith(ctx_.get(), (int32_t) r);
        if (l == nullptr || h == nullptr) {
            throw std::runtime_error("EAGLE-3 head produced no output for row " + std::to_string(r));
        }
        for (int32_t i = 0; i < nd; ++i) {
            logits[(size_t) r * nd + i] = l[d2t_.empty() ? i : d2t_[i]];
        }
        std::memcpy(prenorm.data() + (size_t) r * n_embd_, h, (size_t) n_embd_ * sizeof(float));
    }
}

DraftTree keep_best_nodes(const DraftTree & all, int32_t n_nodes) {
    std::vector<int32_t> order(all.tokens.size());
    for (size_t i = 0; i < order.size(); ++i) {
        order[i] = (int32_t) i;
    }
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return all.scores[a] > all.scores[b]; });
    order.resize(std::min<size_t>(order.size(), (size_t) std::max(n_nodes, 0)));
    std::sort(order.begin(), order.end());
    std::vector<int32_t> new_index(all.tokens.size(), -1);
    DraftTree out;
    for (int32_t i : order) {
        const int32_t parent = all.parents[i] < 0 ? -1 : new_index[all.parents[i]];
        if (all.parents[i] >= 0 && parent < 0) {
            continue;  // unreachable by the ordering argument; never hand out an orphan
        }
        new_index[i] = (int32_t) out.tokens.size();
        out.tokens.push_back(all.tokens[i]);
        out.parents.push_back(parent);
        out.depth.push_back(all.depth[i]);
        out.scores.push_back(all.scores[i]);
    }
    return out;
}
