// Tensor: a shaped, strided view of a reference-counted buffer on the CPU or a CUDA device.
// Autograd state (requires_grad, grad) lives on the tensor; the tape that records
// operations lives in core/autograd.h.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace hsa {

// One exception type for user-visible errors: the message is a single line naming
// the offending value and what was expected. The CLI prints it and exits non-zero.
struct Error : std::runtime_error {
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// HSA_CHECK(cond, "text " << value << " more"): the message is streamed.
#define HSA_CHECK(cond, msg)                              \
    do {                                                  \
        if (!(cond)) {                                    \
            std::ostringstream hsa_check_stream_;         \
            hsa_check_stream_ << msg;                     \
            throw ::hsa::Error(hsa_check_stream_.str());  \
        }                                                 \
    } while (0)
#define HSA_FAIL(msg) HSA_CHECK(false, msg)

enum class DType { F32, BF16, I32, I64 };
enum class Device { CPU, CUDA };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(Device device);

using Shape = std::vector<int64_t>;
std::string shape_string(const Shape& shape);
int64_t shape_numel(const Shape& shape);

// Owns raw memory. CPU memory is 64-byte aligned host memory; CUDA memory comes
// from the caching allocator (core/cuda_allocator.h), never managed memory.
struct TensorImpl;

struct Storage {
    void* data = nullptr;
    size_t bytes = 0;
    Device device = Device::CPU;
    // Tensor::rounded_copy's bf16 copy of this storage's f32 values, when one is held. Code
    // that writes a storage in place must drop it (the autograd API's writers, copy_from and
    // fill do); raw backend calls on a gradient handle (a future all-reduce of gradients, say)
    // must go through writable_grad() or reset it themselves.
    std::shared_ptr<TensorImpl> rounded_copy;
    Storage(size_t bytes, Device device);
    ~Storage();
    Storage(const Storage&) = delete;
    Storage& operator=(const Storage&) = delete;
};

class Tensor {
public:
    Tensor() = default;

    // Factories. Memory from empty() is uninitialised.
    static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
    static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
    static Tensor full(const Shape& shape, float value, DType dtype = DType::F32, Device device = Device::CPU);
    static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
    static Tensor from_vector_i32(const std::vector<int32_t>& values, const Shape& shape);
    static Tensor scalar(float value);

    bool defined() const { return impl_ != nullptr; }
    const Shape& shape() const;
    const Shape& strides() const;
    int ndim() const { return static_cast<int>(shape().size()); }
    int64_t size(int dim) const;  // negative dims count from the end
    int64_t numel() const;
    DType dtype() const;
    Device device() const;
    bool is_contiguous() const;
    size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }

    // Typed pointer to the first element; checks the dtype matches T.
    template <class T> T* data() const;
    void* raw_data() const;

    // Views and copies.
    Tensor view(const Shape& shape) const;  // contiguous tensors only; -1 infers one dim
    Tensor contiguous() const;
    Tensor clone() const;
    Tensor to(Device device) const;
    Tensor to(DType dtype) const;
    void copy_from(const Tensor& source);  // same shape; any device/dtype pair
    void fill(float value);
    std::vector<float> to_vector() const;  // f32/bf16/i32/i64 -> float values (host copy)
    float item() const;

    // Autograd state. These are const: they change the shared tensor, not the handle.
    bool requires_grad() const;
    const Tensor& set_requires_grad(bool value) const;
    Tensor grad() const;        // undefined when no gradient has reached this tensor
    void set_grad(const Tensor& grad) const;
    void zero_grad() const;     // drops the gradient buffer
    // Accumulates g into this tensor's gradient. The first gradient is adopted without a
    // copy, so it may share its buffer with other tensors' gradients (add's backward hands
    // one buffer to both inputs); a gradient is therefore written in place only while
    // nothing else references its buffer, and otherwise replaced by a fresh sum.
    void accumulate_grad(const Tensor& g) const;
    // This tensor's gradient, safe to write in place: zeros when there is none yet, and a
    // private copy when its buffer is shared. For in-place users (clipping, row scatter).
    Tensor writable_grad() const;
    // The gradient when an op may add into it in place (defined, contiguous f32, referenced
    // by nothing else); otherwise undefined, and the op writes a fresh buffer instead.
    Tensor grad_to_accumulate_into() const;
    // True when this handle is the only reference to its TensorImpl and the storage has no
    // other TensorImpl (no views, no other handles): writing it in place is invisible to
    // everything else.
    bool is_sole_reference() const;
    // A bf16 copy of this tensor's f32 values (rounded to nearest even, as the CUDA
    // backend's rounded_bf16_copy makes), written by the kernel that wrote the values
    // (rmsnorm's backward, for the residual stream's gradient) so that a consumer that
    // multiplies them in bf16 need not round them again. Held by the storage, and returned
    // only for a contiguous f32 tensor over all of it; dropped by the in-place writers
    // (accumulate_grad, grad_to_accumulate_into, writable_grad: the only ways a gradient is
    // updated in place; copy_from, fill). rounded_copy() is undefined when none is held;
    // set_rounded_copy holds nothing (and says so) for a tensor that is not all of its storage.
    bool set_rounded_copy(const Tensor& copy) const;
    Tensor rounded_copy() const;

    const std::string& name() const;
    const Tensor& set_name(const std::string& name) const;

    // Identity, for maps keyed by tensor.
    const TensorImpl* id() const { return impl_.get(); }

private:
    explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}
    // A contiguous f32 tensor over all of its storage: the tensors a rounded copy serves.
    bool covers_storage_as_f32() const;
    // Drops the storage's rounded copy: every in-place writer calls it before writing.
    void drop_rounded_copy() const;
    std::shared_ptr<TensorImpl> impl_;
    friend struct TensorImpl;
};

struct TensorImpl {
    std::shared_ptr<Storage> storage;
    int64_t offset = 0;  // in elements
    Shape shape;
    Shape strides;
    DType dtype = DType::F32;
    bool requires_grad = false;
    Tensor grad;
    std::string name;
};

// bf16 <-> f32 with round-to-nearest-even, as the GPU does.
uint16_t float_to_bf16(float value);
float bf16_to_float(uint16_t value);

Shape contiguous_strides(const Shape& shape);

}  // namespace hsa
