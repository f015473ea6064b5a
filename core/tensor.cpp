#include "core/tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/cuda_allocator.h"

namespace hsa {

size_t dtype_size(DType dtype) {
    switch (dtype) {
        case DType::F32: return 4;
        case DType::BF16: return 2;
        case DType::I32: return 4;
        case DType::I64: return 8;
    }
    return 0;
}

const char* dtype_name(DType dtype) {
    switch (dtype) {
        case DType::F32: return "f32";
        case DType::BF16: return "bf16";
        case DType::I32: return "i32";
        case DType::I64: return "i64";
    }
    return "?";
}

const char* device_name(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

std::string shape_string(const Shape& shape) {
    std::ostringstream out;
    out << "[";
    for (size_t i = 0; i < shape.size(); ++i) out << (i ? "," : "") << shape[i];
    out << "]";
    return out.str();
}

int64_t shape_numel(const Shape& shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
}

Shape contiguous_strides(const Shape& shape) {
    Shape strides(shape.size());
    int64_t stride = 1;
    for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
        strides[i] = stride;
        stride *= shape[i];
    }
    return strides;
}

uint16_t float_to_bf16(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
    uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<uint16_t>((bits + rounding) >> 16);
}

float bf16_to_float(uint16_t value) {
    uint32_t bits = static_cast<uint32_t>(value) << 16;
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

Storage::Storage(size_t bytes_, Device device_) : bytes(bytes_), device(device_) {
    size_t padded = (bytes + 63) / 64 * 64;
    if (padded == 0) padded = 64;
    if (device == Device::CPU) {
        data = std::aligned_alloc(64, padded);
        HSA_CHECK(data != nullptr, "out of host memory allocating " << padded << " bytes");
    } else {
        data = cuda_allocator_malloc(padded);
    }
}

Storage::~Storage() {
    if (device == Device::CPU) std::free(data);
    else cuda_allocator_free(data);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
    for (int64_t s : shape)
        HSA_CHECK(s >= 0, "negative dimension in shape " << shape_string(shape));
    auto impl = std::make_shared<TensorImpl>();
    impl->shape = shape;
    impl->strides = contiguous_strides(shape);
    impl->dtype = dtype;
    impl->storage = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
    return Tensor(impl);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
    Tensor t = empty(shape, dtype, device);
    if (device == Device::CPU) std::memset(t.raw_data(), 0, t.nbytes());
    else cuda_memset_zero(t.raw_data(), t.nbytes());
    return t;
}

Tensor Tensor::full(const Shape& shape, float value, DType dtype, Device device) {
    Tensor host = empty(shape, dtype, Device::CPU);
    host.fill(value);
    return device == Device::CPU ? host : host.to(device);
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
    HSA_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
              "from_vector: " << values.size() << " values for shape " << shape_string(shape));
    Tensor t = empty(shape, DType::F32);
    std::memcpy(t.raw_data(), values.data(), values.size() * 4);
    return t;
}

Tensor Tensor::from_vector_i32(const std::vector<int32_t>& values, const Shape& shape) {
    HSA_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
              "from_vector_i32: " << values.size() << " values for shape " << shape_string(shape));
    Tensor t = empty(shape, DType::I32);
    std::memcpy(t.raw_data(), values.data(), values.size() * 4);
    return t;
}

Tensor Tensor::scalar(float value) { return from_vector({value}, {}); }

const Shape& Tensor::shape() const { return impl_->shape; }
const Shape& Tensor::strides() const { return impl_->strides; }
int64_t Tensor::numel() const { return shape_numel(impl_->shape); }
DType Tensor::dtype() const { return impl_->dtype; }
Device Tensor::device() const { return impl_->storage->device; }

int64_t Tensor::size(int dim) const {
    int n = ndim();
    int d = dim < 0 ? dim + n : dim;
    HSA_CHECK(d >= 0 && d < n, "dimension " << dim << " out of range for shape " << shape_string(shape()));
    return impl_->shape[d];
}

bool Tensor::is_contiguous() const { return impl_->strides == contiguous_strides(impl_->shape); }

void* Tensor::raw_data() const {
    return static_cast<char*>(impl_->storage->data) + impl_->offset * static_cast<int64_t>(dtype_size(impl_->dtype));
}

template <class T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::F32; };
template <> struct DTypeOf<uint16_t> { static constexpr DType value = DType::BF16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::I32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::I64; };

template <class T> T* Tensor::data() const {
    HSA_CHECK(defined(), "data() on an undefined tensor");
    HSA_CHECK(impl_->dtype == DTypeOf<T>::value,
              "tensor '" << name() << "' has dtype " << dtype_name(impl_->dtype) << ", expected "
                         << dtype_name(DTypeOf<T>::value));
    return static_cast<T*>(raw_data());
}
template float* Tensor::data<float>() const;
template uint16_t* Tensor::data<uint16_t>() const;
template int32_t* Tensor::data<int32_t>() const;
template int64_t* Tensor::data<int64_t>() const;

Tensor Tensor::view(const Shape& new_shape_in) const {
    HSA_CHECK(is_contiguous(), "view of a non-contiguous tensor " << shape_string(shape()));
    Shape new_shape = new_shape_in;
    int infer = -1;
    int64_t known = 1;
    for (size_t i = 0; i < new_shape.size(); ++i) {
        if (new_shape[i] == -1) {
            HSA_CHECK(infer < 0, "view: more than one -1 in " << shape_string(new_shape_in));
            infer = static_cast<int>(i);
        } else {
            known *= new_shape[i];
        }
    }
    if (infer >= 0) {
        HSA_CHECK(known > 0 && numel() % known == 0,
                  "view: cannot infer a dimension of " << shape_string(new_shape_in) << " from " << shape_string(shape()));
        new_shape[infer] = numel() / known;
    }
    HSA_CHECK(shape_numel(new_shape) == numel(),
              "view: shape " << shape_string(new_shape_in) << " does not match " << shape_string(shape()));
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = impl_->storage;
    impl->offset = impl_->offset;
    impl->shape = new_shape;
    impl->strides = contiguous_strides(new_shape);
    impl->dtype = impl_->dtype;
    impl->name = impl_->name;
    return Tensor(impl);
}

Tensor Tensor::contiguous() const {
    if (is_contiguous()) return *this;
    HSA_CHECK(device() == Device::CPU, "contiguous() of a strided CUDA tensor is not supported");
    Tensor out = empty(shape(), dtype(), Device::CPU);
    const size_t elem = dtype_size(dtype());
    const int n = ndim();
    std::vector<int64_t> index(n, 0);
    const char* src = static_cast<const char*>(impl_->storage->data);
    char* dst = static_cast<char*>(out.raw_data());
    for (int64_t linear = 0; linear < numel(); ++linear) {
        int64_t offset = impl_->offset;
        for (int d = 0; d < n; ++d) offset += index[d] * impl_->strides[d];
        std::memcpy(dst + linear * elem, src + offset * elem, elem);
        for (int d = n - 1; d >= 0; --d) {
            if (++index[d] < impl_->shape[d]) break;
            index[d] = 0;
        }
    }
    return out;
}

Tensor Tensor::clone() const {
    Tensor out = empty(shape(), dtype(), device());
    out.copy_from(*this);
    return out;
}

Tensor Tensor::to(Device target) const {
    if (target == device()) return *this;
    Tensor out = empty(shape(), dtype(), target);
    out.copy_from(*this);
    return out;
}

Tensor Tensor::to(DType target) const {
    if (target == dtype()) return *this;
    Tensor out = empty(shape(), target, device());
    out.copy_from(*this);
    return out;
}

// Converts one element of any dtype to double (host only).
static double load_as_double(const void* base, DType dtype, int64_t i) {
    switch (dtype) {
        case DType::F32: return static_cast<const float*>(base)[i];
        case DType::BF16: return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
        case DType::I32: return static_cast<const int32_t*>(base)[i];
        case DType::I64: return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    }
    return 0;
}

static void store_from_double(void* base, DType dtype, int64_t i, double value) {
    switch (dtype) {
        case DType::F32: static_cast<float*>(base)[i] = static_cast<float>(value); break;
        case DType::BF16: static_cast<uint16_t*>(base)[i] = float_to_bf16(static_cast<float>(value)); break;
        case DType::I32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(value); break;
        case DType::I64: static_cast<int64_t*>(base)[i] = static_cast<int64_t>(value); break;
    }
}

void Tensor::copy_from(const Tensor& source_in) {
    HSA_CHECK(source_in.shape() == shape(),
              "copy_from: shape " << shape_string(source_in.shape()) << " into " << shape_string(shape()));
    HSA_CHECK(is_contiguous(), "copy_from into a non-contiguous tensor");
    drop_rounded_copy();
    Tensor source = source_in.device() == Device::CPU ? source_in.contiguous() : source_in;
    HSA_CHECK(source.is_contiguous(), "copy_from a non-contiguous CUDA tensor");
    if (source.dtype() == dtype()) {
        if (device() == Device::CPU && source.device() == Device::CPU) {
            std::memcpy(raw_data(), source.raw_data(), nbytes());
        } else {
            cuda_copy(raw_data(), device() == Device::CUDA, source.raw_data(), source.device() == Device::CUDA, nbytes());
        }
        return;
    }
    // Dtype conversion happens on the host.
    Tensor host_source = source.to(Device::CPU);
    Tensor host_target = device() == Device::CPU ? *this : empty(shape(), dtype(), Device::CPU);
    const int64_t n = numel();
    for (int64_t i = 0; i < n; ++i)
        store_from_double(host_target.raw_data(), dtype(), i, load_as_double(host_source.raw_data(), source.dtype(), i));
    if (device() != Device::CPU) copy_from(host_target);
}

void Tensor::fill(float value) {
    drop_rounded_copy();
    Tensor host = device() == Device::CPU ? *this : empty(shape(), dtype(), Device::CPU);
    HSA_CHECK(host.is_contiguous(), "fill of a non-contiguous tensor");
    const int64_t n = numel();
    for (int64_t i = 0; i < n; ++i) store_from_double(host.raw_data(), dtype(), i, value);
    if (device() != Device::CPU) copy_from(host);
}

std::vector<float> Tensor::to_vector() const {
    Tensor host = to(Device::CPU).contiguous();
    std::vector<float> out(static_cast<size_t>(numel()));
    for (int64_t i = 0; i < numel(); ++i) out[i] = static_cast<float>(load_as_double(host.raw_data(), dtype(), i));
    return out;
}

float Tensor::item() const {
    HSA_CHECK(numel() == 1, "item() of a tensor with " << numel() << " elements");
    return to_vector()[0];
}

bool Tensor::requires_grad() const { return impl_ && impl_->requires_grad; }
const Tensor& Tensor::set_requires_grad(bool value) const {
    impl_->requires_grad = value;
    return *this;
}
Tensor Tensor::grad() const { return impl_->grad; }
void Tensor::set_grad(const Tensor& grad) const { impl_->grad = grad; }
void Tensor::zero_grad() const { impl_->grad = Tensor(); }
bool Tensor::is_sole_reference() const {
    return impl_ && impl_.use_count() == 1 && impl_->storage.use_count() == 1;
}
bool Tensor::covers_storage_as_f32() const {
    return dtype() == DType::F32 && impl_->offset == 0 && is_contiguous() &&
           static_cast<size_t>(numel()) * sizeof(float) == impl_->storage->bytes;
}
void Tensor::drop_rounded_copy() const {
    if (impl_ && impl_->storage) impl_->storage->rounded_copy.reset();  // the values are about to change
}
bool Tensor::set_rounded_copy(const Tensor& copy) const {
    HSA_CHECK(defined() && copy.defined() && copy.dtype() == DType::BF16 && copy.is_contiguous() &&
                  copy.numel() == numel() && copy.device() == device(),
              "set_rounded_copy: needs a contiguous bf16 copy of as many elements on the same device");
    if (!covers_storage_as_f32()) return false;
    impl_->storage->rounded_copy = copy.impl_;
    return true;
}
Tensor Tensor::rounded_copy() const {
    if (!defined() || !impl_->storage || !impl_->storage->rounded_copy || !covers_storage_as_f32()) return Tensor();
    return Tensor(impl_->storage->rounded_copy).view(shape());
}
const std::string& Tensor::name() const {
    static const std::string undefined_name = "<undefined>";
    return impl_ ? impl_->name : undefined_name;
}
const Tensor& Tensor::set_name(const std::string& name) const {
    impl_->name = name;
    return *this;
}

}  // namespace hsa
