// Declarations of the llama.cpp staging API (src/llama-ext.h) that the installed
// headers do not ship. libllama exports these with C++ linkage; the signatures
// must match the llama.cpp pinned in pyproject.toml (llama-cpp-python 0.3.36,
// llama.cpp 0c1e57098). Python checks that version before loading this module.
#pragma once

#include "llama.h"

#include <cstdint>

LLAMA_API void    llama_set_embeddings_nextn(struct llama_context * ctx, bool value, bool masked);
LLAMA_API float * llama_get_embeddings_nextn(struct llama_context * ctx);
LLAMA_API float * llama_get_embeddings_nextn_ith(struct llama_context * ctx, int32_t i);
LLAMA_API void    llama_set_embeddings_layer_inp(struct llama_context * ctx, uint32_t lid, bool value);
LLAMA_API float * llama_get_embeddings_layer_inp(struct llama_context * ctx, uint32_t lid);
LLAMA_API const int32_t * llama_model_target_layer_ids(const struct llama_model * model);
LLAMA_API uint32_t        llama_model_target_layer_ids_n(const struct llama_model * model);
