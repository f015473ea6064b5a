// Low-level HDF5 helpers for code that calls the HDF5 C API directly: the HDF5 layer
// (core/hdf5_io.cpp) and the writers that need more than it offers (extendible datasets and
// hyperslab reads in trainers/token_shards.cpp, string datasets in trainers/tasks/task_shard.cpp).
#pragma once

#include <hdf5.h>

#include <string>

namespace hsa::hdf5 {

// Owns one HDF5 identifier; closes it with the matching H5?close.
class Handle {
public:
    using Closer = herr_t (*)(hid_t);
    Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
    ~Handle() {
        if (id_ >= 0) closer_(id_);
    }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    Handle(Handle&& other) noexcept : id_(other.id_), closer_(other.closer_) { other.id_ = -1; }
    bool ok() const { return id_ >= 0; }
    hid_t get() const { return id_; }
    operator hid_t() const { return id_; }
    // Gives up ownership: the caller closes the identifier.
    hid_t release() {
        const hid_t id = id_;
        id_ = -1;
        return id;
    }

private:
    hid_t id_;
    Closer closer_;
};

// HDF5 prints its error stack to stderr by default; callers turn failures into hsa::Error
// instead. (The setting is per thread in thread-safe builds, so it is repeated at each entry
// point; it is cheap.)
inline void silence_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

// The innermost message on HDF5's error stack (where the failure was detected), as
// " (HDF5: ...)", or "" when the stack is empty. Clears the stack.
inline std::string error_detail() {
    std::string message;
    H5Ewalk2(
        H5E_DEFAULT, H5E_WALK_UPWARD,
        [](unsigned n, const H5E_error2_t* error, void* data) -> herr_t {
            if (n == 0 && error && error->desc) *static_cast<std::string*>(data) = error->desc;
            return 0;
        },
        &message);
    H5Eclear2(H5E_DEFAULT);
    for (char& c : message)
        if (c == '\n' || c == '\r') c = ' ';
    return message.empty() ? std::string() : " (HDF5: " + message + ")";
}

}  // namespace hsa::hdf5
