// Runs the C++ core (hidden_capture.cpp, head_runner.cpp) without Python, for AddressSanitizer,
// LeakSanitizer and UBSan (tests/test_sanitizers.py builds it with the extension's own sources
// and runs it). Each cycle creates every object the extension creates, uses it the way the
// engine does (capture a decode, encode, extend, draft, forward, truncate), goes through the
// error paths that throw, and destroys everything. No interpreter in the process: a leak report
// names an allocation of ours or of llama.cpp.
//
// usage: driver TARGET.gguf HEAD.gguf D2T.txt LOW,MID,HIGH CYCLES [leak]
//   D2T.txt   the head's draft -> target ids, whitespace separated (empty file: full vocabulary)
//   leak      do not delete one HeadRunner (the test checks that LeakSanitizer reports it)
#include "head_runner.h"
#include "hidden_capture.h"
#include "llama.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

void check(bool ok, const std::string & what) {
    if (!ok) {
        std::fprintf(stderr, "driver check failed: %s\n", what.c_str());
        std::exit(2);
    }
}

// fn must throw E; anything else fails the run
template <typename E, typename F> void expect_throw(F && fn, const char * what) {
    try {
        fn();
    } catch (const E &) {
        return;
    }
    check(false, std::string("no exception: ") + what);
}

std::vector<int32_t> parse_ints(const std::string & text, char sep) {
    std::vector<int32_t> out;
    std::stringstream ss(text);
    std::string item;
    while (sep == ' ' ? bool(ss >> item) : bool(std::getline(ss, item, sep))) {
        out.push_back((int32_t) std::stol(item));
    }
    return out;
}

llama_context * make_context(llama_model * model, HookCapture * hook) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 256;
    cp.n_batch = 128;
    cp.n_ubatch = 64;
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    cp.no_perf = true;
    if (hook != nullptr) {
        cp.cb_eval = &HookCapture::eval_callback;
        cp.cb_eval_user_data = hook;
    }
    llama_context * ctx = llama_init_from_model(model, cp);
    check(ctx != nullptr, "target context");
    return ctx;
}

void decode(llama_context * ctx, std::vector<int32_t> & tokens) {
    check(llama_decode(ctx, llama_batch_get_one(tokens.data(), (int32_t) tokens.size())) == 0, "target decode");
}

void cycle(const char * target_path, const HeadParams & head_params, const std::vector<int32_t> & d2t,
           const std::vector<int32_t> & layers, bool leak) {
    llama_model_params mp = llama_model_default_params();
    llama_model * target = llama_model_load_from_file(target_path, mp);
    check(target != nullptr, "target model");
    const int32_t ht = llama_model_n_embd(target);
    const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(target));

    // the graph hook: one decode of 40 rows in ubatches of 64 and one of 80 rows in two ubatches
    HookCapture hook(layers, ht);
    llama_context * ctx = make_context(target, &hook);
    std::vector<int32_t> tokens;
    for (int32_t i = 0; i < 120; ++i) {
        tokens.push_back(1 + (i * 7) % (n_vocab - 1));
    }
    std::vector<int32_t> first(tokens.begin(), tokens.begin() + 40), rest(tokens.begin() + 40, tokens.end());
    std::vector<float> f, f_rest;
    hook.begin();
    decode(ctx, first);
    check(hook.take(f) == 40, "hook rows of the first decode");
    hook.begin();
    decode(ctx, rest);
    check(hook.take(f_rest) == 80, "hook rows of a two-ubatch decode");
    check(f.size() == (size_t) 40 * 3 * ht, "hook row width");

    // the head, with n_batch 16 so that extend() and encode() run several chunks
    HeadParams p = head_params;
    p.target_ctx = ctx;
    auto * head = new HeadRunner(p, d2t);
    const int32_t hd = head->n_embd();
    std::vector<float> g;
    head->encode(f.data(), 40, g);
    check(g.size() == (size_t) 40 * hd, "encoded rows");
    head->extend(tokens.data() + 1, g.data(), 38, 0);                     // pairs (t[P+1], g[P]), P < 38
    std::vector<int32_t> drafts = head->draft(tokens.data() + 39, g.data() + 38 * hd, 1, 38, 4, 0.0f);
    check(drafts.size() == 4, "a chain of 4 without a cut-off");
    for (int32_t t : drafts) {
        check(t >= 0 && t < n_vocab, "draft ids are target ids");
    }
    head->draft(tokens.data() + 39, g.data() + 38 * hd, 1, 38, 3, 0.99f);  // cut-off path
    head->truncate(20);
    std::vector<float> logits, prenorm;
    head->forward(tokens.data() + 21, g.data() + 20 * hd, 5, 20, logits, prenorm);
    check(prenorm.size() == (size_t) 5 * hd, "forward rows");
    check(head->target_layers() == layers, "target layers");

    // error paths: each throws, and nothing it allocated may leak
    int32_t bad_token = n_vocab + 5;
    expect_throw<std::invalid_argument>([&] { head->extend(&bad_token, g.data(), 1, 0); }, "token outside the vocabulary");
    expect_throw<std::out_of_range>([&] { head->extend(tokens.data(), g.data(), 2, head->n_ctx() - 1); }, "past n_ctx");
    expect_throw<std::invalid_argument>([&] { head->draft(tokens.data(), g.data(), 0, 0, 2, 0.0f); }, "empty draft");
    std::vector<int32_t> bad_d2t = d2t.empty() ? std::vector<int32_t>{0, n_vocab} : d2t;
    bad_d2t.back() = n_vocab;
    expect_throw<std::invalid_argument>([&] { HeadRunner r(p, bad_d2t); }, "d2t outside the vocabulary");
    HeadParams missing = p;
    missing.path += ".missing";
    expect_throw<std::runtime_error>([&] { HeadRunner r(missing, d2t); }, "missing head file");
    expect_throw<std::invalid_argument>([&] { HookCapture h({0, 1, 2}, ht); }, "layer id 0");
    if (!leak) {
        delete head;
    }
    llama_free(ctx);

    // llama.cpp's built-in extraction on a context of its own
    llama_context * ctx2 = make_context(target, nullptr);
    builtin_set(ctx2, layers, true);
    decode(ctx2, first);
    std::vector<float> b;
    builtin_read(ctx2, layers, ht, 40, b);
    check(b.size() == f.size(), "built-in rows");
    double max_diff = 0.0;
    for (size_t i = 0; i < b.size(); ++i) {
        max_diff = std::max(max_diff, (double) std::abs(b[i] - f[i]));
    }
    check(max_diff == 0.0, "built-in extraction equals the hook");
    llama_free(ctx2);
    llama_model_free(target);
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc < 6) {
        std::fprintf(stderr, "usage: %s TARGET.gguf HEAD.gguf D2T.txt LOW,MID,HIGH CYCLES [leak]\n", argv[0]);
        return 1;
    }
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    std::ifstream d2t_file(argv[3]);
    std::stringstream d2t_text;
    d2t_text << d2t_file.rdbuf();
    const std::vector<int32_t> d2t = parse_ints(d2t_text.str(), ' ');
    const std::vector<int32_t> layers = parse_ints(argv[4], ',');
    const int cycles = std::atoi(argv[5]);
    const bool leak = argc > 6 && std::string(argv[6]) == "leak";
    HeadParams p;
    p.path = argv[2];
    p.n_ctx = 128;
    p.n_batch = 16;
    for (int i = 0; i < cycles; ++i) {
        cycle(argv[1], p, d2t, layers, leak && i == 0);
    }
    llama_backend_free();
    std::printf("driver: %d cycles ok\n", cycles);
    return 0;
}
