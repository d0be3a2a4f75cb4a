// Python module llama_eagle3._core: the hidden-state capture hook and the head runner.
// llama.cpp objects cross the boundary as integer addresses taken from llama_cpp's
// ctypes handles; this module links the same libllama that llama_cpp loaded.
#include "head_graph.h"
#include "head_runner.h"
#include "hidden_capture.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

namespace py = pybind11;

namespace {

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using i32_array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

llama_context * as_ctx(uintptr_t addr) {
    if (addr == 0) {
        throw std::invalid_argument("null llama_context");
    }
    return reinterpret_cast<llama_context *>(addr);
}

py::array_t<float> to_array(std::vector<float> && v, int64_t rows, int64_t cols) {
    auto * heap = new std::vector<float>(std::move(v));
    py::capsule owner(heap, [](void * p) { delete static_cast<std::vector<float> *>(p); });
    return py::array_t<float>({rows, cols}, heap->data(), owner);
}

// rows x width matrix check for (tokens, g) style inputs
void check_rows(const f32_array & a, int64_t rows, int64_t width, const char * name) {
    if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != width) {
        throw std::invalid_argument(std::string(name) + " must have shape (" + std::to_string(rows) + ", " +
                                    std::to_string(width) + ")");
    }
}

}  // namespace

// The operations HeadRunner (llama.cpp's eagle3 graph) and HeadGraph (this runtime's graph, eagle3x
// heads) share, bound alike: proposer.py drives either through them.
template <typename Head>
void bind_head_operations(py::class_<Head> & cls) {
    cls
        .def_property_readonly("n_embd", &Head::n_embd)
        .def_property_readonly("n_embd_enc", &Head::n_embd_enc)
        .def_property_readonly("n_ctx", &Head::n_ctx)
        .def_property_readonly("target_layers", &Head::target_layers)
        .def("encode", [](Head & h, f32_array features) {
            const int64_t n = features.ndim() == 2 ? features.shape(0) : -1;
            check_rows(features, n, h.n_embd_enc(), "features");
            std::vector<float> g;
            {
                py::gil_scoped_release release;
                h.encode(features.data(), n, g);
            }
            return to_array(std::move(g), n, h.n_embd());
        })
        .def("extend", [](Head & h, i32_array tokens, f32_array g, int32_t pos0) {
            check_rows(g, tokens.size(), h.n_embd(), "g");
            py::gil_scoped_release release;
            h.extend(tokens.data(), g.data(), tokens.size(), pos0);
        })
        .def("draft", [](Head & h, i32_array tokens, f32_array g, int32_t pos0, int32_t n_max, float p_min) {
            check_rows(g, tokens.size(), h.n_embd(), "g");
            std::vector<int32_t> r;
            {
                py::gil_scoped_release release;
                r = h.draft(tokens.data(), g.data(), tokens.size(), pos0, n_max, p_min);
            }
            return r;
        })
        .def("draft_tree", [](Head & h, i32_array tokens, f32_array g, int32_t pos0, int32_t depth, int32_t width,
                              int32_t n_nodes) {
            check_rows(g, tokens.size(), h.n_embd(), "g");
            DraftTree t;
            {
                py::gil_scoped_release release;
                t = h.draft_tree(tokens.data(), g.data(), tokens.size(), pos0, depth, width, n_nodes);
            }
            return py::make_tuple(t.tokens, t.parents, t.depth, t.scores);
        },
             "(tokens, parents, depth, scores) of the draft tree; see head_runner.h")
        .def("forward", [](Head & h, i32_array tokens, f32_array g, int32_t pos0) {
            const int64_t n = tokens.size();
            check_rows(g, n, h.n_embd(), "g");
            std::vector<float> logits, prenorm;
            {
                py::gil_scoped_release release;
                h.forward(tokens.data(), g.data(), n, pos0, logits, prenorm);
            }
            const int64_t nd = n == 0 ? 0 : (int64_t) (logits.size() / n);
            return py::make_tuple(to_array(std::move(logits), n, nd), to_array(std::move(prenorm), n, h.n_embd()));
        })
        .def("truncate", &Head::truncate);
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "llama-eagle3 native core: hidden-state capture and the EAGLE-3 head runner";

    py::class_<HookCapture>(m, "HookCapture")
        .def(py::init<const std::vector<int32_t> &, int32_t>(), py::arg("layer_ids"), py::arg("n_embd"))
        .def_property_readonly_static("callback_address", [](py::object) {
            return reinterpret_cast<uintptr_t>(&HookCapture::eval_callback);
        })
        .def_property_readonly("user_data_address", [](HookCapture & c) { return reinterpret_cast<uintptr_t>(&c); })
        .def("begin", &HookCapture::begin)
        .def("pause", &HookCapture::pause)
        .def_property_readonly("enabled", &HookCapture::enabled)
        .def("take", [](const HookCapture & c) {
            std::vector<float> out;
            const int64_t n = c.take(out);
            const int64_t width = n == 0 ? 0 : (int64_t) (out.size() / n);
            return to_array(std::move(out), n, width);
        });

    m.def("builtin_set", [](uintptr_t ctx, const std::vector<int32_t> & ids, bool on) { builtin_set(as_ctx(ctx), ids, on); });
    m.def("builtin_read", [](uintptr_t ctx, const std::vector<int32_t> & ids, int32_t n_embd, int64_t n_rows) {
        std::vector<float> out;
        builtin_read(as_ctx(ctx), ids, n_embd, n_rows, out);
        return to_array(std::move(out), n_rows, (int64_t) ids.size() * n_embd);
    });

    py::class_<HeadRunner> runner(m, "HeadRunner");
    runner
        .def(py::init([](const std::string & path, uintptr_t target_ctx, int32_t n_ctx, int32_t n_batch, int32_t n_threads,
                         int32_t n_threads_batch, int32_t n_gpu_layers, std::vector<int32_t> d2t,
                         int32_t tree_width_max, int32_t tree_cells_max) {
                 HeadParams p;
                 p.path = path;
                 p.target_ctx = as_ctx(target_ctx);
                 p.n_ctx = n_ctx;
                 p.n_batch = n_batch;
                 p.n_threads = n_threads;
                 p.n_threads_batch = n_threads_batch;
                 p.n_gpu_layers = n_gpu_layers;
                 p.tree_width_max = tree_width_max;
                 p.tree_cells_max = tree_cells_max;
                 py::gil_scoped_release release;
                 return new HeadRunner(p, std::move(d2t));
             }),
             py::arg("path"), py::arg("target_ctx"), py::arg("n_ctx"), py::arg("n_batch"), py::arg("n_threads"),
             py::arg("n_threads_batch"), py::arg("n_gpu_layers"), py::arg("d2t"),
             py::arg("tree_width_max") = 1, py::arg("tree_cells_max") = 0);
    bind_head_operations(runner);

    // the same chain operations for eagle3x heads in this runtime's own graph (head_graph.h)
    py::class_<HeadGraph> graph(m, "HeadGraph");
    graph
        .def(py::init([](const std::string & head_path, const std::string & target_path, int32_t n_target_embd,
                         int32_t n_ctx, int32_t n_batch, int32_t n_threads, std::vector<int32_t> d2t,
                         int32_t tree_width_max, int32_t tree_cells_max) {
                 HeadGraphParams p;
                 p.tree_width_max = tree_width_max;
                 p.tree_cells_max = tree_cells_max;
                 p.head_path = head_path;
                 p.target_path = target_path;
                 p.n_target_embd = n_target_embd;
                 p.n_ctx = n_ctx;
                 p.n_batch = n_batch;
                 p.n_threads = n_threads;
                 py::gil_scoped_release release;
                 return new HeadGraph(p, std::move(d2t));
             }),
             py::arg("head_path"), py::arg("target_path"), py::arg("n_target_embd"), py::arg("n_ctx"), py::arg("n_batch"),
             py::arg("n_threads"), py::arg("d2t"), py::arg("tree_width_max") = 1, py::arg("tree_cells_max") = 0);
    bind_head_operations(graph);
}
