// The autograd tape: every differentiable op that sees an input requiring a gradient
// appends one entry (its outputs and a backward closure) to the current thread's tape.
// backward(loss) walks the tape in reverse, so entries run in reverse execution order,
// which is a valid topological order by construction. No graph, no compiler.
#pragma once

#include <functional>
#include <vector>

#include "core/tensor.h"

namespace hsa {

class Tape {
public:
    // The closure receives the outputs' gradients (zero-filled where an output got none)
    // and accumulates into its inputs with Tensor::accumulate_grad.
    using BackwardFn = std::function<void(const std::vector<Tensor>& grad_outputs)>;

    static Tape& current();

    // True when recording is on (not inside a NoGradGuard) and any input requires grad.
    bool should_record(std::initializer_list<const Tensor*> inputs) const;
    // Marks outputs as requiring grad and records the closure.
    void record(std::vector<Tensor> outputs, BackwardFn backward);

    // Seeds d(loss)/d(loss) = 1 (loss must be a 1-element tensor), runs all entries in
    // reverse and clears the tape. Gradients accumulate into .grad of the leaves (and of
    // any intermediate that has requires_grad set).
    void backward(const Tensor& loss);
    void clear();
    size_t size() const { return entries_.size(); }

    bool enabled = true;

private:
    struct Entry {
        std::vector<Tensor> outputs;
        BackwardFn backward;
    };
    std::vector<Entry> entries_;
};

// Disables recording in its scope (evaluation, optimiser updates, finite differences).
class NoGradGuard {
public:
    NoGradGuard() : previous_(Tape::current().enabled) { Tape::current().enabled = false; }
    ~NoGradGuard() { Tape::current().enabled = previous_; }
    NoGradGuard(const NoGradGuard&) = delete;
    NoGradGuard& operator=(const NoGradGuard&) = delete;

private:
    bool previous_;
};

inline void backward(const Tensor& loss) { Tape::current().backward(loss); }

}  // namespace hsa
