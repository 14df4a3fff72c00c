// Binding of the checkpoint's tensors to the typed weights (core/weights.h), checked at load time. The binding
// code is the single source of truth for tensor names, dtypes and shapes.
#pragma once
#include "core/weights.h"
#include "io/checkpoint.h"
#include "io/config.h"

namespace dsv4::model {
using core::Bf16Matrix;
using core::CompressorWeights;
using core::ExpertMatrix;
using core::ExpertWeights;
using core::Fp4Matrix;
using core::Fp8Matrix;
using core::HcWeights;
using core::LayerWeights;
using core::load_bf16;
using core::ModelWeights;
using core::SharedExpertWeights;

// Binds every tensor of `config` in `checkpoint`. All missing tensors and dtype/shape mismatches are
// collected and reported at once (DSV4_ERR_WEIGHTS_*); resolves config.expert_format when it is absent.
ModelWeights bind_weights(io::ModelConfig &config, const io::Checkpoint &checkpoint, bool check_values);

}  // namespace dsv4::model
