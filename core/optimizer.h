// AdamW over a ParameterStore (decoupled weight decay, applied only to entries marked for
// decay) and global gradient-norm clipping. State (m, v, step) is kept per parameter in
// the store's order, which is the order checkpoints use.
#pragma once

#include <vector>

#include "core/model/model.h"

namespace hsa {

struct AdamWConfig {
    float beta1 = 0.9f;
    float beta2 = 0.95f;
    float eps = 1e-8f;
    float weight_decay = 0.1f;
};

class AdamW {
public:
    AdamW(ParameterStore& params, const AdamWConfig& config);

    // Global L2 norm of all gradients (missing gradients count as zero), accumulated in double.
    double grad_norm() const;
    // Scales all gradients so their global norm is at most max_norm; returns the norm before.
    double clip_grad_norm(double max_norm);
    // One update at learning rate lr; parameters without a gradient are left untouched.
    void step(float lr);
    // One update with the gradients clipped to global norm max_norm (0 = no clipping) given
    // their norm (grad_norm()'s value), the factor applied inside the update instead of to
    // the gradients (left unscaled): the same parameters and moments as clip_grad_norm then
    // step, without a pass over every gradient.
    void clipped_step(float lr, double max_norm, double norm);

    int64_t steps_taken() const { return step_; }
    std::vector<Tensor>& first_moments() { return m_; }
    std::vector<Tensor>& second_moments() { return v_; }
    void set_steps_taken(int64_t step) { step_ = step; }

private:
    void step_with_scale(float lr, float grad_scale);

    ParameterStore& params_;
    AdamWConfig config_;
    std::vector<Tensor> m_, v_;
    int64_t step_ = 0;
};

}  // namespace hsa
