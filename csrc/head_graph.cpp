#include "head_graph.h"

#include "head_runner.h"  // DraftTree
#include "head_weights.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>

namespace {

constexpr int GRAPH_NODES = 512;

}  // namespace

struct HeadGraph::Impl {
    // declared in the order they are made: destroyed graph allocator, weights, backend
    std::unique_ptr<ggml_backend, decltype(&ggml_backend_free)> backend{nullptr, ggml_backend_free};
    HeadWeights wts;
    std::unique_ptr<ggml_gallocr, decltype(&ggml_gallocr_free)> galloc{nullptr, ggml_gallocr_free};
    const HeadHParams & hp = wts.hp;
    std::vector<int32_t> d2t;
    int32_t n_ctx = 0, n_batch = 0, n_vd = 0, tree_width_max = 1, tree_cells_max = 0;
    // KV cell p holds position p; positions [kv_begin, n_filled) are written (empty: kv_begin == n_filled).
    // As in llama.cpp, a sequence may start at any position of an empty KV.
    int32_t kv_begin = 0, n_filled = 0;
    std::vector<uint8_t> graph_meta;            // the compute context's tensor and graph structs
    std::vector<float> logits, state;           // outputs of the latest decode's read rows

    ggml_tensor * W(const char * name) const { return wts.get(name); }
    ggml_tensor * norm(ggml_context * c, ggml_tensor * x, const char * weight) const {
        return ggml_mul(c, ggml_rms_norm(c, x, hp.eps), W(weight));
    }
    ggml_tensor * lin(ggml_context * c, const char * weight, const char * bias, ggml_tensor * x) const {
        ggml_tensor * y = ggml_mul_mat(c, W(weight), x);
        return W(bias) != nullptr ? ggml_add(c, y, W(bias)) : y;
    }
    ggml_tensor * rope(ggml_context * c, ggml_tensor * x, ggml_tensor * pos) const {
        return ggml_rope_ext(c, x, pos, W("rope_freqs.weight"), hp.hdim, GGML_ROPE_TYPE_NEOX, hp.n_ctx_orig, hp.theta,
                             hp.freq_scale, hp.ext_factor, hp.attn_factor, 32.0f, 1.0f);
    }

    ggml_context * graph_ctx() {
        graph_meta.resize(ggml_tensor_overhead() * GRAPH_NODES + ggml_graph_overhead_custom(GRAPH_NODES, false));
        ggml_init_params ip = {graph_meta.size(), graph_meta.data(), /*no_alloc =*/ true};
        return ggml_init(ip);
    }
    void alloc(ggml_cgraph * gf) {
        if (!ggml_gallocr_alloc_graph(galloc.get(), gf)) {
            throw std::runtime_error("eagle3x head: could not allocate the compute graph");
        }
    }
    void compute(ggml_cgraph * gf) {
        if (ggml_backend_graph_compute(backend.get(), gf) != GGML_STATUS_SUCCESS) {
            throw std::runtime_error("eagle3x head: graph computation failed");
        }
    }

    void check_d2t();  // d2t against the output rows and the vocabulary; sets n_vd
    void run(const int32_t * tokens, const float * g, int64_t rows, const int32_t * positions, int32_t cell0,
             int32_t n_kv, const float * mask, int read);
    void check_tokens(const int32_t * tokens, int64_t n) const;
    void decode(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, int read);  // read: 0 none, 1 last, 2 all
    int32_t top1(float * prob) const;
    std::vector<std::pair<int32_t, float>> topk(int32_t row, int32_t k) const;
};

void HeadGraph::Impl::check_d2t() {
    n_vd = (int32_t) W("output.weight")->ne[1];
    if (!d2t.empty() && (int32_t) d2t.size() != n_vd) {
        throw std::runtime_error("d2t has " + std::to_string(d2t.size()) + " ids for a draft vocabulary of " +
                                 std::to_string(n_vd));
    }
    const int64_t n_vocab = W("token_embd.weight")->ne[1];
    if (d2t.empty() && n_vd != n_vocab) {
        throw std::runtime_error("the head's output has " + std::to_string(n_vd) + " rows but no d2t maps them into "
                                 "the vocabulary of " + std::to_string(n_vocab));
    }
    for (int32_t t : d2t) {
        if (t < 0 || t >= n_vocab) {
            throw std::invalid_argument("d2t maps to target id " + std::to_string(t) + " outside the vocabulary");
        }
    }
}

HeadGraph::HeadGraph(const HeadGraphParams & p, std::vector<int32_t> draft_to_target) : impl_(new Impl) {
    Impl & m = *impl_;
    if (p.n_ctx <= 0 || p.n_batch <= 0 || p.n_threads <= 0 || p.tree_width_max < 1 || p.tree_cells_max < 0) {
        throw std::invalid_argument("n_ctx, n_batch, n_threads and tree_width_max must be positive, tree_cells_max >= 0");
    }
    m.tree_width_max = p.tree_width_max;
    m.tree_cells_max = p.tree_width_max > 1 ? p.tree_cells_max : 0;
    m.d2t = std::move(draft_to_target);
    m.n_ctx = p.n_ctx;
    m.n_batch = p.n_batch;
    m.backend.reset(ggml_backend_cpu_init());
    if (!m.backend) {
        throw std::runtime_error("could not start ggml's CPU backend");
    }
    ggml_backend_cpu_set_n_threads(m.backend.get(), p.n_threads);
    load_head_weights(m.wts, p.head_path, p.target_path, p.n_target_embd, m.backend.get(), m.n_ctx + m.tree_cells_max);
    m.check_d2t();
    m.galloc.reset(ggml_gallocr_new(ggml_backend_get_default_buffer_type(m.backend.get())));
}

HeadGraph::~HeadGraph() = default;

int32_t HeadGraph::n_embd() const { return impl_->hp.hd; }
int32_t HeadGraph::n_embd_enc() const { return (int32_t) impl_->wts.layers.size() * impl_->hp.ht; }
int32_t HeadGraph::n_ctx() const { return impl_->n_ctx; }
std::vector<int32_t> HeadGraph::target_layers() const { return impl_->wts.layers; }

void HeadGraph::encode(const float * features, int64_t n, std::vector<float> & g) {
    Impl & m = *impl_;
    const HeadHParams & hp = m.hp;
    const int64_t n_enc = n_embd_enc(), n_taps = (int64_t) m.wts.layers.size();
    g.resize((size_t) n * hp.hd);
    for (int64_t i = 0; i < n; i += m.n_batch) {
        const int64_t rows = std::min<int64_t>(m.n_batch, n - i);
        ggml_context * c = m.graph_ctx();
        ggml_tensor * f = ggml_new_tensor_2d(c, GGML_TYPE_F32, n_enc, rows);
        ggml_set_input(f);
        ggml_tensor * x = f;
        if (hp.norm_before_fc) {
            x = m.norm(c, x, "enc.output_norm.weight");
        }
        if (hp.fc_norm) {  // one RMSNorm per tap: [Ht, taps, rows] times the [Ht, taps] weights
            x = ggml_rms_norm(c, ggml_reshape_3d(c, x, hp.ht, n_taps, rows), hp.eps);
            x = ggml_mul(c, x, ggml_reshape_2d(c, m.W("enc.tap_norm.weight"), hp.ht, n_taps));
            x = ggml_reshape_2d(c, x, n_enc, rows);
        }
        ggml_tensor * out = ggml_mul_mat(c, m.W("fc.weight"), x);
        ggml_set_output(out);
        ggml_cgraph * gf = ggml_new_graph_custom(c, GRAPH_NODES, false);
        ggml_build_forward_expand(gf, out);
        try {
            m.alloc(gf);
            ggml_backend_tensor_set(f, features + (size_t) i * n_enc, 0, ggml_nbytes(f));
            m.compute(gf);
            ggml_backend_tensor_get(out, g.data() + (size_t) i * hp.hd, 0, ggml_nbytes(out));
        } catch (...) {
            ggml_free(c);
            throw;
        }
        ggml_free(c);
    }
}

// One graph over `rows` pairs at positions pos[]: K/V go to cells [cell0, cell0 + rows), row j attends
// to the cells [0, n_kv) that mask[j * n_kv + t] leaves at 0 (-inf: not). `read` (0 none, 1 the last
// row, 2 every row) leaves those rows' logits [rows, Vd] and states [rows, Hd] in logits / state.
void HeadGraph::Impl::run(const int32_t * tokens, const float * g, int64_t rows, const int32_t * positions,
                          int32_t cell0, int32_t n_kv, const float * mask_data, int read) {
    ggml_context * c = graph_ctx();
    ggml_tensor * tok = ggml_new_tensor_1d(c, GGML_TYPE_I32, rows);
    ggml_tensor * gin = ggml_new_tensor_2d(c, GGML_TYPE_F32, hp.hd, rows);
    ggml_tensor * pos = ggml_new_tensor_1d(c, GGML_TYPE_I32, rows);
    ggml_tensor * mask = ggml_new_tensor_2d(c, GGML_TYPE_F32, n_kv, rows);
    for (ggml_tensor * t : {tok, gin, pos, mask}) ggml_set_input(t);
    ggml_cgraph * gf = ggml_new_graph_custom(c, GRAPH_NODES, false);

    ggml_tensor * e = norm(c, ggml_get_rows(c, W("token_embd.weight"), tok), "blk.0.attn_norm.weight");
    ggml_tensor * gn = norm(c, gin, "blk.0.attn_norm_2.weight");
    ggml_tensor * x = ggml_concat(c, e, gn, 0);
    ggml_tensor * residual = hp.norm_before_residual ? gn : gin;
    ggml_tensor * q = ggml_reshape_3d(c, lin(c, "blk.0.attn_q.weight", "blk.0.attn_q.bias", x), hp.hdim, hp.nh, rows);
    ggml_tensor * k = ggml_reshape_3d(c, lin(c, "blk.0.attn_k.weight", "blk.0.attn_k.bias", x), hp.hdim, hp.nkv, rows);
    ggml_tensor * v = ggml_reshape_3d(c, lin(c, "blk.0.attn_v.weight", "blk.0.attn_v.bias", x), hp.hdim, hp.nkv, rows);
    if (W("blk.0.attn_q_norm.weight") != nullptr) {  // per head, before RoPE
        q = norm(c, q, "blk.0.attn_q_norm.weight");
        k = norm(c, k, "blk.0.attn_k_norm.weight");
    }
    q = rope(c, q, pos);
    k = rope(c, k, pos);
    const size_t nb1 = wts.cache_k->nb[1], nb2 = wts.cache_k->nb[2];
    ggml_build_forward_expand(gf, ggml_cpy(c, k, ggml_view_3d(c, wts.cache_k, hp.hdim, hp.nkv, rows, nb1, nb2, cell0 * nb2)));
    ggml_build_forward_expand(gf, ggml_cpy(c, v, ggml_view_3d(c, wts.cache_v, hp.hdim, hp.nkv, rows, nb1, nb2, cell0 * nb2)));
    ggml_tensor * out_state = nullptr, * out_logits = nullptr;
    if (read != 0) {  // else only the K/V writes run: a one-layer head's later rows read nothing else of these
        // attention over cells [0, n_kv): K [hdim, n_kv, nkv], Q [hdim, rows, nh] (query head h reads kv head
        // h / (nh / nkv), as HF's repeat_interleave), V^T [n_kv, hdim, nkv]
        ggml_tensor * K = ggml_permute(c, ggml_view_3d(c, wts.cache_k, hp.hdim, hp.nkv, n_kv, nb1, nb2, 0), 0, 2, 1, 3);
        ggml_tensor * V = ggml_view_3d(c, wts.cache_v, hp.hdim, hp.nkv, n_kv, nb1, nb2, 0);
        ggml_tensor * kq = ggml_mul_mat(c, K, ggml_permute(c, q, 0, 2, 1, 3));
        kq = ggml_soft_max_ext(c, kq, mask, 1.0f / std::sqrt((float) hp.hdim), 0.0f);
        ggml_tensor * kqv = ggml_mul_mat(c, ggml_cont(c, ggml_permute(c, V, 1, 2, 0, 3)), kq);  // [hdim, rows, nh]
        ggml_tensor * attn = ggml_cont_2d(c, ggml_permute(c, kqv, 0, 2, 1, 3), hp.hdim * hp.nh, rows);
        ggml_tensor * h1 = ggml_add(c, lin(c, "blk.0.attn_output.weight", "blk.0.attn_output.bias", attn), residual);
        ggml_tensor * mn = norm(c, h1, "blk.0.ffn_norm.weight");
        ggml_tensor * act = ggml_mul(c, ggml_silu(c, lin(c, "blk.0.ffn_gate.weight", "blk.0.ffn_gate.bias", mn)),
                                     lin(c, "blk.0.ffn_up.weight", "blk.0.ffn_up.bias", mn));
        ggml_tensor * h = ggml_add(c, lin(c, "blk.0.ffn_down.weight", "blk.0.ffn_down.bias", act), h1);
        ggml_tensor * hn = norm(c, h, "output_norm.weight");
        ggml_tensor * st = hp.norm_output ? hn : h;  // the state the next step reads
        if (read == 1) {
            hn = ggml_view_2d(c, hn, hp.hd, 1, hn->nb[1], (rows - 1) * hn->nb[1]);
            st = ggml_view_2d(c, st, hp.hd, 1, st->nb[1], (rows - 1) * st->nb[1]);
        }
        out_state = ggml_cont(c, st);
        out_logits = ggml_mul_mat(c, W("output.weight"), hn);
        ggml_set_output(out_state);
        ggml_set_output(out_logits);
        ggml_build_forward_expand(gf, out_state);
        ggml_build_forward_expand(gf, out_logits);
    }
    try {
        alloc(gf);
        ggml_backend_tensor_set(tok, tokens, 0, ggml_nbytes(tok));
        ggml_backend_tensor_set(gin, g, 0, ggml_nbytes(gin));
        ggml_backend_tensor_set(pos, positions, 0, ggml_nbytes(pos));
        if (read != 0) {
            ggml_backend_tensor_set(mask, mask_data, 0, ggml_nbytes(mask));
        }
        compute(gf);
        if (read != 0) {
            state.resize(ggml_nelements(out_state));
            logits.resize(ggml_nelements(out_logits));
            ggml_backend_tensor_get(out_state, state.data(), 0, ggml_nbytes(out_state));
            ggml_backend_tensor_get(out_logits, logits.data(), 0, ggml_nbytes(out_logits));
        }
    } catch (...) {
        ggml_free(c);
        throw;
    }
    ggml_free(c);
}

void HeadGraph::Impl::check_tokens(const int32_t * tokens, int64_t n) const {
    const int32_t n_vocab = (int32_t) W("token_embd.weight")->ne[1];
    for (int64_t r = 0; r < n; ++r) {
        if (tokens[r] < 0 || tokens[r] >= n_vocab) {
            throw std::invalid_argument("token id " + std::to_string(tokens[r]) + " outside the vocabulary");
        }
    }
}

// Pairs (tokens[i], g[i]) at positions (= cells) pos0 + i, causal, in n_batch chunks; `read` applies
// to the last chunk.
void HeadGraph::Impl::decode(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, int read) {
    if (pos0 >= 0 && (pos0 <= kv_begin || kv_begin == n_filled)) {
        kv_begin = n_filled = pos0;  // nothing before pos0 stays: the sequence starts here
    }
    if (pos0 < 0 || pos0 > n_filled || pos0 + n > n_ctx) {
        throw std::out_of_range("eagle3x head positions [" + std::to_string(pos0) + ", " + std::to_string(pos0 + n) +
                                ") do not continue its KV (positions [" + std::to_string(kv_begin) + ", " +
                                std::to_string(n_filled) + ")) within its context of " + std::to_string(n_ctx));
    }
    if (read == 2 && n > n_batch) {
        throw std::invalid_argument("forward() takes at most n_batch rows");
    }
    check_tokens(tokens, n);
    n_filled = pos0;
    for (int64_t i = 0; i < n; i += n_batch) {
        const int64_t rows = std::min<int64_t>(n_batch, n - i);
        const int32_t p0 = pos0 + (int32_t) i, n_kv = p0 + (int32_t) rows;
        const int chunk_read = i + rows == n ? read : 0;
        std::vector<int32_t> p(rows);
        std::vector<float> mk(chunk_read != 0 ? (size_t) n_kv * rows : 0);
        for (int64_t j = 0; j < rows; ++j) {
            p[j] = p0 + (int32_t) j;
            for (int32_t t = 0; t < n_kv && chunk_read != 0; ++t) {
                mk[(size_t) j * n_kv + t] = t >= kv_begin && t <= p[j] ? 0.0f : -INFINITY;
            }
        }
        run(tokens + i, g + (size_t) i * hp.hd, rows, p.data(), p0, n_kv, mk.data(), chunk_read);
        n_filled = n_kv;
    }
}

// top-1 of the latest read row (target id); *prob: its probability within the draft vocabulary
int32_t HeadGraph::Impl::top1(float * prob) const {
    const float * l = logits.data() + logits.size() - n_vd;
    const int32_t best = (int32_t) (std::max_element(l, l + n_vd) - l);
    if (prob != nullptr) {
        double sum = 0.0;
        for (int32_t i = 0; i < n_vd; ++i) sum += std::exp((double) (l[i] - l[best]));
        *prob = (float) (1.0 / sum);
    }
    return d2t.empty() ? best : d2t[best];
}

// the k most likely draft tokens of read row `row`: (target id, log-probability), best first
std::vector<std::pair<int32_t, float>> HeadGraph::Impl::topk(int32_t row, int32_t k) const {
    const float * l = logits.data() + (size_t) row * n_vd;
    const float best = *std::max_element(l, l + n_vd);
    double sum = 0.0;
    for (int32_t i = 0; i < n_vd; ++i) sum += std::exp((double) (l[i] - best));
    const float log_z = best + (float) std::log(sum);
    std::vector<int32_t> idx(n_vd);
    for (int32_t i = 0; i < n_vd; ++i) idx[i] = i;
    k = std::min(k, n_vd);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
    std::vector<std::pair<int32_t, float>> out;
    for (int32_t i = 0; i < k; ++i) {
        out.emplace_back(d2t.empty() ? idx[i] : d2t[idx[i]], l[idx[i]] - log_z);
    }
    return out;
}

// HeadRunner::draft_tree's algorithm (head_runner.h). Here an expanded node of level d (the j-th of
// the level) takes KV cell base + (d-2)*width + j, base = pos0 + n (speculative cells, dropped on
// return), and attends to the committed cells [kv_begin, base), its expanded ancestors' cells and
// its own: the mask does what llama.cpp's per-node sequences do.
DraftTree HeadGraph::draft_tree(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, int32_t depth,
                                int32_t width, int32_t n_nodes) {
    Impl & m = *impl_;
    if (n <= 0) {
        throw std::invalid_argument("draft_tree() needs at least one (token, g) pair");
    }
    if (width < 1 || width > m.tree_width_max) {
        throw std::invalid_argument("tree width " + std::to_string(width) + " outside 1.." +
                                    std::to_string(m.tree_width_max) + " (the head was made for trees up to that width)");
    }
    if (width > 1 && width * depth > m.tree_cells_max) {
        throw std::invalid_argument("a tree of width " + std::to_string(width) + " and depth " + std::to_string(depth) +
                                    " needs more than the " + std::to_string(m.tree_cells_max) +
                                    " KV cells reserved for trees");
    }
    depth = std::min<int32_t>(depth, m.n_ctx - (pos0 + (int32_t) n));
    m.decode(tokens, g, n, pos0, 1);
    const int32_t base = pos0 + (int32_t) n, hd = m.hp.hd;
    DraftTree all;                        // every candidate, in creation (= depth) order
    std::vector<int32_t> cell, src;       // a candidate's KV cell once expanded (-1: not), its state
    std::vector<std::vector<float>> states;
    auto add_children = [&](int32_t row, int32_t parent, int32_t d) {
        states.emplace_back(m.state.begin() + (size_t) row * hd, m.state.begin() + (size_t) (row + 1) * hd);
        const float score = parent < 0 ? 0.0f : all.scores[parent];
        for (const auto & [t, lp] : m.topk(row, width)) {
            all.tokens.push_back(t);
            all.parents.push_back(parent);
            all.depth.push_back(d);
            all.scores.push_back(score + lp);
            cell.push_back(-1);
            src.push_back((int32_t) states.size() - 1);
        }
    };
    if (depth >= 1) {
        add_children(0, -1, 1);
    }
    size_t level_begin = 0;
    for (int32_t d = 2; d <= depth; ++d) {
        std::vector<int32_t> level;
        for (size_t i = level_begin; i < all.tokens.size(); ++i) level.push_back((int32_t) i);
        level_begin = all.tokens.size();
        const int32_t rows = std::min<int32_t>(width, (int32_t) level.size());
        std::partial_sort(level.begin(), level.begin() + rows, level.end(),
                          [&](int32_t a, int32_t b) { return all.scores[a] > all.scores[b]; });
        const int32_t cell0 = base + (d - 2) * width, n_kv = cell0 + rows;
        std::vector<int32_t> toks(rows), pos(rows, base + d - 2);
        std::vector<float> gs((size_t) rows * hd), mask((size_t) rows * n_kv, -INFINITY);
        for (int32_t j = 0; j < rows; ++j) {
            const int32_t x = level[j];
            cell[x] = cell0 + j;
            toks[j] = all.tokens[x];
            std::copy(states[src[x]].begin(), states[src[x]].end(), gs.begin() + (size_t) j * hd);
            float * row = mask.data() + (size_t) j * n_kv;
            std::fill(row + m.kv_begin, row + base, 0.0f);
            for (int32_t a = x; a >= 0; a = all.parents[a]) row[cell[a]] = 0.0f;  // every ancestor was expanded
        }
        m.check_tokens(toks.data(), rows);
        m.run(toks.data(), gs.data(), rows, pos.data(), cell0, n_kv, mask.data(), 2);
        for (int32_t j = 0; j < rows; ++j) add_children(j, level[j], d);
    }
    m.n_filled = base;  // the tree's cells are dropped
    return keep_best_nodes(all, n_nodes);
}

void HeadGraph::extend(const int32_t * tokens, const float * g, int64_t n, int32_t pos0) {
    if (n > 0) {
        impl_->decode(tokens, g, n, pos0, 0);
    } else {
        truncate(pos0);
    }
}

std::vector<int32_t> HeadGraph::draft(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, int32_t n_max,
                                      float p_min) {
    Impl & m = *impl_;
    if (n <= 0) {
        throw std::invalid_argument("draft() needs at least one (token, g) pair");
    }
    n_max = std::min<int32_t>(n_max, m.n_ctx - (pos0 + (int32_t) n));
    m.decode(tokens, g, n, pos0, 1);
    std::vector<int32_t> res;
    int32_t pos = pos0 + (int32_t) n;
    while ((int32_t) res.size() < n_max) {
        float p = 1.0f;
        const int32_t t = m.top1(p_min > 0.0f ? &p : nullptr);
        if (p < p_min) {
            break;
        }
        res.push_back(t);
        if ((int32_t) res.size() == n_max) {
            break;
        }
        const std::vector<float> h = m.state;
        m.decode(&t, h.data(), 1, pos++, 1);
    }
    return res;
}

void HeadGraph::forward(const int32_t * tokens, const float * g, int64_t n, int32_t pos0, std::vector<float> & logits,
                        std::vector<float> & state) {
    impl_->logits.clear();
    impl_->state.clear();
    impl_->decode(tokens, g, n, pos0, 2);
    logits = impl_->logits;
    state = impl_->state;
}

void HeadGraph::truncate(int32_t pos) {
    Impl & m = *impl_;
    m.n_filled = std::min(m.n_filled, std::max<int32_t>(pos, 0));
    if (m.n_filled <= m.kv_begin) {
        m.kv_begin = m.n_filled = 0;  // empty
    }
}
