// Named intermediate tensors of the forward pass, observed "ask, then get": the caller says which (name, layer)
// it wants, and only those are read back from the device; an unobserved pass computes and copies nothing for
// observation. The names are listed in include/dsv4/dsv4.h (dsv4_eval_callback); eval-golden's layer replay and
// users' debugging callbacks use them.
#pragma once
#include <dsv4/dsv4.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "backend/backend.h"

namespace dsv4::model {

struct Observer {
    // Whether `name` of `layer` is wanted; empty = every tensor. Asked before the tensor is read, and before it
    // is computed where it is computed only for observation (kv_comp, index_kv_comp, index_scores).
    std::function<bool(const char *name, int layer)> wants;
    // rows x cols row-major values of dtype (F32, BF16 as fp32 values, I32), borrowed for the call.
    std::function<void(const char *name, int layer, dsv4_dtype dtype, int64_t rows, int64_t cols, const void *data)> get;
};

// The schedule's access to an optional observer over one backend's tensors.
class Tap {
public:
    Tap(const Observer *obs, backend::Backend &be) : obs_(obs && obs->get ? obs : nullptr), be_(be) {}
    bool wants(const char *name, int layer) const { return obs_ && (!obs_->wants || obs_->wants(name, layer)); }
    // Observes rows [row0, row0 + rows) and columns [col0, col0 + cols) of t (all of them by default).
    void operator()(const char *name, int layer, dsv4_dtype dtype, const core::Tensor &t, int64_t row0 = 0,
                    int64_t rows = -1, int64_t col0 = 0, int64_t cols = -1);

private:
    const Observer *obs_;
    backend::Backend &be_;
    std::vector<uint8_t> staging_, block_;
};

}  // namespace dsv4::model
