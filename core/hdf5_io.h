// A small HDF5 layer over the C library: tensors as datasets, string / integer / float
// attributes, groups. Shared by `hsa op`, the data shards and the checkpoints
// (shared/design/SYSTEM.md "Data formats"); the files are plain HDF5, readable with h5py.
//
// Every failure is an hsa::Error with a one-line message naming the file and the dataset
// or attribute; the library's own error printing (H5E auto-printing) is switched off.
//
// Paths are HDF5 paths from the file's root: "out", "/grad/q" and "grad/q" all work.
// Datasets are stored contiguous, uncompressed, little-endian.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace hsa {

enum class Hdf5Mode {
    Read,       // existing file, read-only
    Create,     // create, truncating any existing file
    ReadWrite,  // existing file, read and write
};

// The element type a dataset is stored as. Auto: the tensor's own type (f32, i32, i64;
// bf16 is stored as f32). Narrower integer types (token shards use u16/u32) are range-checked
// before writing: a value that does not fit is an error, never a silent clamp.
enum class Hdf5Type { Auto, F32, F64, I8, I16, I32, I64, U8, U16, U32, U64 };

class Hdf5File {
public:
    Hdf5File() = default;
    Hdf5File(const std::string& filename, Hdf5Mode mode = Hdf5Mode::Read);
    ~Hdf5File();
    Hdf5File(Hdf5File&& other) noexcept;
    Hdf5File& operator=(Hdf5File&& other) noexcept;
    Hdf5File(const Hdf5File&) = delete;
    Hdf5File& operator=(const Hdf5File&) = delete;

    bool is_open() const { return id_ >= 0; }
    const std::string& filename() const { return filename_; }
    Hdf5Mode mode() const { return mode_; }
    void flush();
    void close();  // also done by the destructor (which cannot report errors)

    // ---- structure ----
    bool has(const std::string& path) const;  // a dataset or group (the root "/" always exists)
    bool is_dataset(const std::string& path) const;
    bool is_group(const std::string& path) const;
    // Names (not paths) of the members of a group, sorted by name.
    std::vector<std::string> list(const std::string& group = "/") const;
    void create_group(const std::string& path);  // with intermediate groups; no-op if present

    // ---- datasets ----
    Shape dataset_shape(const std::string& path) const;  // {} for a scalar dataset
    // The stored type as a short name: f32, f64, i8..i64, u8..u64, or e.g. "string",
    // "compound", "f16" for types read_tensor does not support.
    std::string dataset_type(const std::string& path) const;
    // Reads a whole dataset, scalar or N-D: f32 and f64 -> F32 (f64 rounded); i8, i16, i32,
    // u8, u16, u32 -> I32 (u32 values above 2^31-1 are an error); i64, u64 -> I64 (u64
    // values above 2^63-1 are an error). Other types are an error naming the type.
    Tensor read_tensor(const std::string& path) const;
    // Writes a tensor (any device, any strides) as a dataset, creating intermediate groups
    // ("grad/q" creates "grad"); an existing dataset at the path is replaced.
    void write_tensor(const std::string& path, const Tensor& tensor, Hdf5Type type = Hdf5Type::Auto);

    // ---- attributes, on the object at `object` ("/" = the file's root group) ----
    bool has_attribute(const std::string& object, const std::string& name) const;
    std::vector<std::string> list_attributes(const std::string& object = "/") const;
    // Fixed- or variable-length strings.
    std::string read_string_attribute(const std::string& object, const std::string& name) const;
    // Integer (or boolean, or a float holding a whole number) scalars.
    int64_t read_int_attribute(const std::string& object, const std::string& name) const;
    // Float or integer scalars.
    double read_float_attribute(const std::string& object, const std::string& name) const;
    // Writers replace an existing attribute of the same name. Strings are variable-length
    // UTF-8 (h5py reads them as str), integers i64, floats f64.
    void write_string_attribute(const std::string& object, const std::string& name, const std::string& value);
    void write_int_attribute(const std::string& object, const std::string& name, int64_t value);
    void write_float_attribute(const std::string& object, const std::string& name, double value);

private:
    void require_open(const char* what) const;
    void require_writable(const char* what) const;
    int64_t id_ = -1;  // hid_t (int64_t in HDF5 >= 1.10), kept out of this header
    std::string filename_;
    Hdf5Mode mode_ = Hdf5Mode::Read;
};

// Short name of an Hdf5Type ("u16", ...).
const char* hdf5_type_name(Hdf5Type type);

}  // namespace hsa
