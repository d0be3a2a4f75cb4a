#include "head_weights.h"

#include "ggml.h"
#include "gguf.h"

#include <fstream>
#include <memory>
#include <stdexcept>
#include <tuple>

namespace {

// A GGUF file's metadata and tensor directory (no data). gguf's typed getters abort on a type
// mismatch, so every getter checks the type first and throws instead.
struct GgufFile {
    std::string path;
    gguf_context * gguf = nullptr;
    ggml_context * meta = nullptr;

    explicit GgufFile(const std::string & p) : path(p) {
        gguf_init_params ip = {/*no_alloc =*/ true, /*ctx =*/ &meta};
        gguf = gguf_init_from_file(p.c_str(), ip);
        if (gguf == nullptr) {
            throw std::runtime_error("cannot read the GGUF file " + p);
        }
    }
    ~GgufFile() {
        if (meta != nullptr) ggml_free(meta);
        if (gguf != nullptr) gguf_free(gguf);
    }
    GgufFile(const GgufFile &) = delete;
    GgufFile & operator=(const GgufFile &) = delete;

    int64_t find(const std::string & key, bool required) const {
        const int64_t id = gguf_find_key(gguf, key.c_str());
        if (id < 0 && required) {
            throw std::runtime_error(path + ": missing key " + key);
        }
        return id;
    }
    [[noreturn]] void bad(const std::string & key, const char * what) const {
        throw std::runtime_error(path + ": key " + key + " must be " + what);
    }
    int64_t integer(const std::string & key, int64_t def, bool required = false) const {
        const int64_t id = find(key, required);
        if (id < 0) return def;
        switch (gguf_get_kv_type(gguf, id)) {
            case GGUF_TYPE_UINT32: return gguf_get_val_u32(gguf, id);
            case GGUF_TYPE_INT32: return gguf_get_val_i32(gguf, id);
            case GGUF_TYPE_UINT64: return (int64_t) gguf_get_val_u64(gguf, id);
            default: bad(key, "an integer");
        }
    }
    float real(const std::string & key, float def, bool required = false) const {
        const int64_t id = find(key, required);
        if (id < 0) return def;
        if (gguf_get_kv_type(gguf, id) != GGUF_TYPE_FLOAT32) bad(key, "a float32");
        return gguf_get_val_f32(gguf, id);
    }
    bool boolean(const std::string & key) const {
        const int64_t id = find(key, false);
        if (id < 0) return false;
        if (gguf_get_kv_type(gguf, id) != GGUF_TYPE_BOOL) bad(key, "a bool");
        return gguf_get_val_bool(gguf, id);
    }
    std::string str(const std::string & key, const std::string & def) const {
        const int64_t id = find(key, false);
        if (id < 0) return def;
        if (gguf_get_kv_type(gguf, id) != GGUF_TYPE_STRING) bad(key, "a string");
        return gguf_get_val_str(gguf, id);
    }
    std::vector<int32_t> ints(const std::string & key) const {
        const int64_t id = find(key, true);
        const auto t = gguf_get_kv_type(gguf, id) == GGUF_TYPE_ARRAY ? gguf_get_arr_type(gguf, id) : GGUF_TYPE_COUNT;
        if (t != GGUF_TYPE_INT32 && t != GGUF_TYPE_UINT32) bad(key, "an array of 32-bit integers");
        const auto * d = static_cast<const int32_t *>(gguf_get_arr_data(gguf, id));
        return std::vector<int32_t>(d, d + gguf_get_arr_n(gguf, id));
    }
    ggml_tensor * tensor(const std::string & name) const { return ggml_get_tensor(meta, name.c_str()); }
};

// head GGUF name -> required (a plain eagle3 head's tensors that every head has)
const std::map<std::string, bool> HEAD_TENSORS = {
    {"fc.weight", true}, {"blk.0.attn_norm.weight", true}, {"blk.0.attn_norm_2.weight", true},
    {"blk.0.attn_q.weight", true}, {"blk.0.attn_k.weight", true}, {"blk.0.attn_v.weight", true},
    {"blk.0.attn_output.weight", true}, {"blk.0.ffn_norm.weight", true}, {"blk.0.ffn_gate.weight", true},
    {"blk.0.ffn_up.weight", true}, {"blk.0.ffn_down.weight", true}, {"output_norm.weight", true},
    {"output.weight", false}, {"token_embd.weight", false}, {"enc.output_norm.weight", false},
    {"enc.tap_norm.weight", false}, {"rope_freqs.weight", false},
    {"blk.0.attn_q_norm.weight", false}, {"blk.0.attn_k_norm.weight", false},
    {"blk.0.attn_q.bias", false}, {"blk.0.attn_k.bias", false}, {"blk.0.attn_v.bias", false},
    {"blk.0.attn_output.bias", false}, {"blk.0.ffn_gate.bias", false}, {"blk.0.ffn_up.bias", false},
    {"blk.0.ffn_down.bias", false},
};

HeadHParams read_hparams(const GgufFile & f, std::vector<int32_t> & layers) {
    const std::string a = "eagle3x.";
    HeadHParams hp;
    hp.hd = (int32_t) f.integer(a + "embedding_length", 0, true);
    hp.ff = (int32_t) f.integer(a + "feed_forward_length", 0, true);
    hp.nh = (int32_t) f.integer(a + "attention.head_count", 0, true);
    hp.nkv = (int32_t) f.integer(a + "attention.head_count_kv", hp.nh);
    hp.hdim = (int32_t) f.integer(a + "attention.key_length", hp.nh > 0 ? hp.hd / hp.nh : 0);
    hp.ht = (int32_t) f.integer(a + "target_hidden_size", 0, true);
    hp.eps = f.real(a + "attention.layer_norm_rms_epsilon", 0.0f, true);
    hp.theta = f.real(a + "rope.freq_base", 10000.0f);
    hp.norm_before_residual = f.boolean(a + "norm_before_residual");
    hp.norm_before_fc = f.boolean(a + "norm_before_fc");
    hp.norm_output = f.boolean(a + "norm_output");
    hp.fc_norm = f.boolean(a + "fc_norm");
    const std::string kind = f.str(a + "rope.scaling.type", "none");
    const float factor = f.real(a + "rope.scaling.factor", 1.0f);
    if (kind == "linear" || kind == "yarn") {
        hp.freq_scale = 1.0f / factor;
    } else if (kind != "none") {
        throw std::runtime_error(f.path + ": rope.scaling.type " + kind + " is not none, linear or yarn");
    }
    if (kind == "yarn") {
        hp.ext_factor = 1.0f;
        hp.attn_factor = f.real(a + "rope.scaling.attn_factor", 1.0f);  // ggml multiplies by mscale(factor)
        hp.n_ctx_orig = (int32_t) f.integer(a + "rope.scaling.original_context_length", 0, true);
    }
    layers = f.ints(a + "target_layers");
    if (hp.hd <= 0 || hp.nh <= 0 || hp.nkv <= 0 || hp.hdim <= 0 || hp.hdim % 2 || hp.nh % hp.nkv || hp.ht <= 0 ||
        layers.size() < 3 || layers.size() > 5) {
        throw std::runtime_error(f.path + ": inconsistent eagle3x hyperparameters (convert the head again)");
    }
    return hp;
}

// the file's data of `src` into `dst` (same shape and type), bounds checked
void read_data(const GgufFile & f, const std::string & name, ggml_tensor * dst) {
    const int64_t id = gguf_find_tensor(f.gguf, name.c_str());
    const size_t off = gguf_get_data_offset(f.gguf) + gguf_get_tensor_offset(f.gguf, id);
    std::ifstream in(f.path, std::ios::binary);
    in.seekg(0, std::ios::end);
    const size_t size = (size_t) in.tellg();
    const size_t nbytes = ggml_nbytes(dst);
    if (off + nbytes > size) {
        throw std::runtime_error(f.path + ": tensor " + name + " runs past the end of the file (truncated?)");
    }
    const bool host = ggml_backend_buffer_is_host(dst->buffer);  // read in place, no second copy
    std::vector<char> buf(host ? 0 : nbytes);
    in.seekg((std::streamoff) off);
    in.read(host ? static_cast<char *>(dst->data) : buf.data(), (std::streamsize) nbytes);
    if (!in) {
        throw std::runtime_error(f.path + ": could not read tensor " + name);
    }
    if (!host) {
        ggml_backend_tensor_set(dst, buf.data(), 0, nbytes);
    }
}

}  // namespace

HeadWeights::~HeadWeights() {
    if (buf != nullptr) ggml_backend_buffer_free(buf);
    if (ctx != nullptr) ggml_free(ctx);
}

ggml_tensor * HeadWeights::get(const char * name) const {
    auto it = w.find(name);
    return it == w.end() ? nullptr : it->second;
}

void load_head_weights(HeadWeights & out, const std::string & head_path, const std::string & target_path,
                       int32_t n_target_embd, ggml_backend_t backend, int32_t n_cells) {
    GgufFile head(head_path);
    if (head.str("general.architecture", "") != "eagle3x") {
        throw std::runtime_error(head_path + ": general.architecture is not eagle3x");
    }
    out.hp = read_hparams(head, out.layers);
    const HeadHParams & hp = out.hp;
    if (hp.ht != n_target_embd) {
        throw std::runtime_error(head_path + ": the head reads target states of width " + std::to_string(hp.ht) +
                                 ", the target has " + std::to_string(n_target_embd));
    }
    std::unique_ptr<GgufFile> target;
    // (file, name in the file, our name)
    std::vector<std::tuple<const GgufFile *, std::string, std::string>> plan;
    for (const auto & [name, required] : HEAD_TENSORS) {
        if (head.tensor(name) != nullptr) {
            plan.emplace_back(&head, name, name);
        } else if (required) {
            throw std::runtime_error(head_path + ": eagle3x head lacks tensor " + name);
        }
    }
    for (const char * name : {"token_embd.weight", "output.weight"}) {
        if (head.tensor(name) != nullptr) continue;
        if (!target) target = std::make_unique<GgufFile>(target_path);
        const std::string src = target->tensor(name) != nullptr ? name : "token_embd.weight";  // tied embeddings
        if (target->tensor(src) == nullptr) {
            throw std::runtime_error(target_path + ": the target has no " + src + " for the head to share");
        }
        plan.emplace_back(target.get(), src, name);
    }
    ggml_init_params ip = {ggml_tensor_overhead() * (plan.size() + 2), nullptr, /*no_alloc =*/ true};
    out.ctx = ggml_init(ip);
    for (auto & [file, src, name] : plan) {
        ggml_tensor * t = ggml_dup_tensor(out.ctx, file->tensor(src));
        ggml_set_name(t, name.c_str());
        out.w[name] = t;
    }
    const auto shape_is = [&](const char * name, int64_t ne0, int64_t ne1) {
        ggml_tensor * t = out.get(name);
        return t == nullptr || (t->ne[0] == ne0 && (ne1 < 0 || t->ne[1] == ne1));
    };
    const int64_t n_enc = (int64_t) out.layers.size() * hp.ht;
    if (!shape_is("fc.weight", n_enc, hp.hd) || !shape_is("token_embd.weight", hp.hd, -1) ||
        !shape_is("output.weight", hp.hd, -1) || !shape_is("blk.0.attn_q.weight", 2 * hp.hd, hp.nh * hp.hdim) ||
        !shape_is("blk.0.attn_k.weight", 2 * hp.hd, hp.nkv * hp.hdim) || !shape_is("enc.tap_norm.weight", n_enc, -1) ||
        !shape_is("blk.0.attn_q_norm.weight", hp.hdim, -1) || !shape_is("blk.0.ffn_gate.weight", hp.hd, hp.ff) ||
        (hp.fc_norm && out.get("enc.tap_norm.weight") == nullptr) ||
        (hp.norm_before_fc && out.get("enc.output_norm.weight") == nullptr) ||
        ((out.get("blk.0.attn_q_norm.weight") == nullptr) != (out.get("blk.0.attn_k_norm.weight") == nullptr))) {
        throw std::runtime_error(head_path + ": eagle3x tensors do not fit its hyperparameters or the target "
                                 "(token embedding / output width)");
    }
    out.cache_k = ggml_new_tensor_3d(out.ctx, GGML_TYPE_F32, hp.hdim, hp.nkv, n_cells);
    out.cache_v = ggml_new_tensor_3d(out.ctx, GGML_TYPE_F32, hp.hdim, hp.nkv, n_cells);
    out.buf = ggml_backend_alloc_ctx_tensors(out.ctx, backend);
    if (out.buf == nullptr) {
        throw std::runtime_error("eagle3x head: could not allocate its weights and KV cache");
    }
    for (auto & [file, src, name] : plan) {
        read_data(*file, src, out.w[name]);
    }
}
