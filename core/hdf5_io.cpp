#include "core/hdf5_io.h"

#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <type_traits>

#include "core/hdf5_handle.h"

namespace hsa {

static_assert(std::is_same<hid_t, int64_t>::value, "core/hdf5_io.h stores hid_t as int64_t (HDF5 >= 1.10)");

namespace {

using hdf5::Handle;

std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> parts;
    std::string part;
    for (char c : path) {
        if (c == '/') {
            if (!part.empty() && part != ".") parts.push_back(part);
            part.clear();
        } else {
            part += c;
        }
    }
    if (!part.empty() && part != ".") parts.push_back(part);
    return parts;
}

std::string type_name(hid_t type) {
    const size_t size = H5Tget_size(type);
    switch (H5Tget_class(type)) {
        case H5T_INTEGER:
            return std::string(H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "i") + std::to_string(8 * size);
        case H5T_FLOAT: return "f" + std::to_string(8 * size);
        case H5T_STRING: return "string";
        case H5T_COMPOUND: return "compound";
        case H5T_ENUM: return "enum";
        case H5T_ARRAY: return "array";
        case H5T_VLEN: return "vlen";
        case H5T_OPAQUE: return "opaque";
        case H5T_BITFIELD: return "bitfield";
        case H5T_REFERENCE: return "reference";
        case H5T_TIME: return "time";
        default: return "unknown";
    }
}

struct StoreType {
    hid_t file_type;
    bool is_float;
    bool is_signed;
    int bits;
};

StoreType store_type(Hdf5Type type) {
    switch (type) {
        case Hdf5Type::F32: return {H5T_IEEE_F32LE, true, true, 32};
        case Hdf5Type::F64: return {H5T_IEEE_F64LE, true, true, 64};
        case Hdf5Type::I8: return {H5T_STD_I8LE, false, true, 8};
        case Hdf5Type::I16: return {H5T_STD_I16LE, false, true, 16};
        case Hdf5Type::I32: return {H5T_STD_I32LE, false, true, 32};
        case Hdf5Type::I64: return {H5T_STD_I64LE, false, true, 64};
        case Hdf5Type::U8: return {H5T_STD_U8LE, false, false, 8};
        case Hdf5Type::U16: return {H5T_STD_U16LE, false, false, 16};
        case Hdf5Type::U32: return {H5T_STD_U32LE, false, false, 32};
        case Hdf5Type::U64: return {H5T_STD_U64LE, false, false, 64};
        case Hdf5Type::Auto: break;
    }
    HSA_FAIL("hdf5: no storage type for Auto");
}

template <class T>
void check_integer_range(const T* values, int64_t n, const StoreType& st, const std::string& where, const char* name) {
    long double low, high;
    if (st.is_signed) {
        high = std::ldexp(1.0L, st.bits - 1) - 1;
        low = -high - 1;
    } else {
        low = 0;
        high = std::ldexp(1.0L, st.bits) - 1;
    }
    for (int64_t i = 0; i < n; ++i) {
        const long double v = static_cast<long double>(values[i]);
        HSA_CHECK(v >= low && v <= high, where << ": cannot store as " << name << ": value " << values[i] << " at element "
                                               << i << " is outside [" << static_cast<long long>(low) << ", "
                                               << static_cast<unsigned long long>(high) << "]");
    }
}

herr_t collect_attribute_name(hid_t, const char* name, const H5A_info_t*, void* data) {
    static_cast<std::vector<std::string>*>(data)->push_back(name);
    return 0;
}

}  // namespace

const char* hdf5_type_name(Hdf5Type type) {
    switch (type) {
        case Hdf5Type::Auto: return "auto";
        case Hdf5Type::F32: return "f32";
        case Hdf5Type::F64: return "f64";
        case Hdf5Type::I8: return "i8";
        case Hdf5Type::I16: return "i16";
        case Hdf5Type::I32: return "i32";
        case Hdf5Type::I64: return "i64";
        case Hdf5Type::U8: return "u8";
        case Hdf5Type::U16: return "u16";
        case Hdf5Type::U32: return "u32";
        case Hdf5Type::U64: return "u64";
    }
    return "?";
}

// ---------------------------------------------------------------- file

Hdf5File::Hdf5File(const std::string& filename, Hdf5Mode mode) : filename_(filename), mode_(mode) {
    hdf5::silence_errors();
    HSA_CHECK(!filename.empty(), "HDF5: empty file name");
    if (mode == Hdf5Mode::Create) {
        // Objects in the 1.8 format: readable by every HDF5 >= 1.8 and h5py, and attributes
        // of any size (a checkpoint's config JSON) are stored densely.
        Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
        if (fapl.ok()) H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18);
        hid_t id = H5Fcreate(filename.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.ok() ? fapl.get() : H5P_DEFAULT);
        if (id < 0) {
            const std::string why = hdf5::error_detail();
            std::error_code ec;
            const auto parent = std::filesystem::path(filename).parent_path();
            if (!parent.empty() && !std::filesystem::is_directory(parent, ec))
                HSA_FAIL("cannot create HDF5 file '" << filename << "': folder '" << parent.string() << "' does not exist");
            HSA_FAIL("cannot create HDF5 file '" << filename << "'" << why);
        }
        id_ = id;
        return;
    }
    std::error_code ec;
    const auto status = std::filesystem::status(filename, ec);
    HSA_CHECK(std::filesystem::exists(status), "HDF5 file '" << filename << "' does not exist");
    HSA_CHECK(!std::filesystem::is_directory(status), "'" << filename << "' is a folder, not an HDF5 file");
    const htri_t is_hdf5 = H5Fis_hdf5(filename.c_str());
    if (is_hdf5 < 0) HSA_FAIL("cannot read '" << filename << "'" << hdf5::error_detail());
    HSA_CHECK(is_hdf5 > 0, "'" << filename << "' is not an HDF5 file");
    hid_t id = H5Fopen(filename.c_str(), mode == Hdf5Mode::Read ? H5F_ACC_RDONLY : H5F_ACC_RDWR, H5P_DEFAULT);
    if (id < 0)
        HSA_FAIL("cannot open HDF5 file '" << filename << "' for " << (mode == Hdf5Mode::Read ? "reading" : "writing")
                                           << hdf5::error_detail());
    id_ = id;
}

Hdf5File::~Hdf5File() {
    if (id_ >= 0) H5Fclose(id_);
}

Hdf5File::Hdf5File(Hdf5File&& other) noexcept : id_(other.id_), filename_(std::move(other.filename_)), mode_(other.mode_) {
    other.id_ = -1;
}

Hdf5File& Hdf5File::operator=(Hdf5File&& other) noexcept {
    if (this != &other) {
        if (id_ >= 0) H5Fclose(id_);
        id_ = other.id_;
        filename_ = std::move(other.filename_);
        mode_ = other.mode_;
        other.id_ = -1;
    }
    return *this;
}

void Hdf5File::require_open(const char* what) const {
    hdf5::silence_errors();
    HSA_CHECK(id_ >= 0, "HDF5: " << what << " on a closed file" << (filename_.empty() ? "" : " '" + filename_ + "'"));
}

void Hdf5File::require_writable(const char* what) const {
    require_open(what);
    HSA_CHECK(mode_ != Hdf5Mode::Read, filename_ << ": " << what << " on a file opened read-only");
}

void Hdf5File::flush() {
    require_open("flush");
    if (H5Fflush(id_, H5F_SCOPE_GLOBAL) < 0) HSA_FAIL(filename_ << ": cannot flush" << hdf5::error_detail());
}

void Hdf5File::close() {
    if (id_ < 0) return;
    hdf5::silence_errors();
    const hid_t id = id_;
    id_ = -1;
    if (H5Fclose(id) < 0) HSA_FAIL(filename_ << ": cannot close" << hdf5::error_detail());
}

// ---------------------------------------------------------------- structure

bool Hdf5File::has(const std::string& path) const {
    require_open("has");
    const std::vector<std::string> parts = split_path(path);
    if (parts.empty()) return true;
    std::string prefix;
    for (const auto& part : parts) {
        prefix += "/" + part;
        // Fails (negative) when an earlier component is not a group: not there either way.
        if (H5Lexists(id_, prefix.c_str(), H5P_DEFAULT) <= 0) {
            H5Eclear2(H5E_DEFAULT);
            return false;
        }
    }
    const htri_t exists = H5Oexists_by_name(id_, prefix.c_str(), H5P_DEFAULT);  // false for a dangling link
    H5Eclear2(H5E_DEFAULT);
    return exists > 0;
}

namespace {
H5I_type_t object_type(hid_t file, const std::string& path) {
    Handle object(H5Oopen(file, path.c_str(), H5P_DEFAULT), H5Oclose);
    if (!object.ok()) {
        H5Eclear2(H5E_DEFAULT);
        return H5I_BADID;
    }
    return H5Iget_type(object);
}
}  // namespace

bool Hdf5File::is_dataset(const std::string& path) const {
    return has(path) && object_type(id_, split_path(path).empty() ? "/" : path) == H5I_DATASET;
}

bool Hdf5File::is_group(const std::string& path) const {
    return has(path) && object_type(id_, split_path(path).empty() ? "/" : path) == H5I_GROUP;
}

std::vector<std::string> Hdf5File::list(const std::string& group) const {
    require_open("list");
    HSA_CHECK(has(group), filename_ << ": no group '" << group << "'");
    HSA_CHECK(is_group(group), filename_ << ": '" << group << "' is a dataset, not a group");
    Handle g(H5Gopen2(id_, split_path(group).empty() ? "/" : group.c_str(), H5P_DEFAULT), H5Gclose);
    if (!g.ok()) HSA_FAIL(filename_ << ": cannot open group '" << group << "'" << hdf5::error_detail());
    H5G_info_t info;
    if (H5Gget_info(g, &info) < 0) HSA_FAIL(filename_ << ": cannot list group '" << group << "'" << hdf5::error_detail());
    std::vector<std::string> names;
    for (hsize_t i = 0; i < info.nlinks; ++i) {
        const ssize_t length = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
        if (length < 0) HSA_FAIL(filename_ << ": cannot list group '" << group << "'" << hdf5::error_detail());
        std::vector<char> name(static_cast<size_t>(length) + 1, '\0');
        H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT);
        names.emplace_back(name.data());
    }
    std::sort(names.begin(), names.end());
    return names;
}

void Hdf5File::create_group(const std::string& path) {
    require_writable("create_group");
    if (is_group(path)) return;
    HSA_CHECK(!has(path), filename_ << ": cannot create group '" << path << "': a dataset has that name");
    Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
    H5Pset_create_intermediate_group(lcpl, 1);
    Handle g(H5Gcreate2(id_, path.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
    if (!g.ok()) HSA_FAIL(filename_ << ": cannot create group '" << path << "'" << hdf5::error_detail());
}

// ---------------------------------------------------------------- datasets

namespace {
Handle open_dataset(hid_t file, const Hdf5File& self, const std::string& path) {
    HSA_CHECK(self.has(path), self.filename() << ": no dataset '" << path << "'");
    HSA_CHECK(self.is_dataset(path), self.filename() << ": '" << path << "' is a group, not a dataset");
    Handle ds(H5Dopen2(file, path.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) HSA_FAIL(self.filename() << ": cannot open dataset '" << path << "'" << hdf5::error_detail());
    return ds;
}

Shape dataspace_shape(hid_t space, const std::string& where) {
    switch (H5Sget_simple_extent_type(space)) {
        case H5S_SCALAR: return {};
        case H5S_SIMPLE: {
            const int ndims = H5Sget_simple_extent_ndims(space);
            std::vector<hsize_t> dims(static_cast<size_t>(std::max(ndims, 0)));
            H5Sget_simple_extent_dims(space, dims.data(), nullptr);
            return Shape(dims.begin(), dims.end());
        }
        default: HSA_FAIL(where << " has an empty (null) dataspace");
    }
}
}  // namespace

Shape Hdf5File::dataset_shape(const std::string& path) const {
    require_open("dataset_shape");
    Handle ds = open_dataset(id_, *this, path);
    Handle space(H5Dget_space(ds), H5Sclose);
    return dataspace_shape(space, filename_ + ": dataset '" + path + "'");
}

std::string Hdf5File::dataset_type(const std::string& path) const {
    require_open("dataset_type");
    Handle ds = open_dataset(id_, *this, path);
    Handle type(H5Dget_type(ds), H5Tclose);
    return type_name(type);
}

Tensor Hdf5File::read_tensor(const std::string& path) const {
    require_open("read_tensor");
    const std::string where = filename_ + ": dataset '" + path + "'";
    Handle ds = open_dataset(id_, *this, path);
    Handle space(H5Dget_space(ds), H5Sclose);
    const Shape shape = dataspace_shape(space, where);
    Handle type(H5Dget_type(ds), H5Tclose);
    const H5T_class_t cls = H5Tget_class(type);
    const size_t size = H5Tget_size(type);
    const bool is_unsigned = cls == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_NONE;
    const int64_t n = shape_numel(shape);

    auto read_into = [&](hid_t memory_type, void* buffer) {
        if (n == 0) return;
        if (H5Dread(ds, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer) < 0)
            HSA_FAIL("cannot read " << where << hdf5::error_detail());
    };

    if (cls == H5T_FLOAT && (size == 4 || size == 8)) {
        Tensor t = Tensor::empty(shape, DType::F32);
        read_into(H5T_NATIVE_FLOAT, t.raw_data());  // f64 is rounded to nearest by the library
        return t;
    }
    if (cls == H5T_INTEGER && (size == 1 || size == 2 || size == 4 || size == 8)) {
        if (size == 8) {
            Tensor t = Tensor::empty(shape, DType::I64);
            if (!is_unsigned) {
                read_into(H5T_NATIVE_INT64, t.raw_data());
            } else {
                std::vector<uint64_t> values(static_cast<size_t>(n));
                read_into(H5T_NATIVE_UINT64, values.data());
                int64_t* out = t.data<int64_t>();
                for (int64_t i = 0; i < n; ++i) {
                    HSA_CHECK(values[i] <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                              where << " (u64): value " << values[i] << " at element " << i << " does not fit i64");
                    out[i] = static_cast<int64_t>(values[i]);
                }
            }
            return t;
        }
        Tensor t = Tensor::empty(shape, DType::I32);
        if (!(is_unsigned && size == 4)) {
            read_into(H5T_NATIVE_INT32, t.raw_data());  // i8, i16, i32, u8, u16: exact
        } else {
            std::vector<uint32_t> values(static_cast<size_t>(n));
            read_into(H5T_NATIVE_UINT32, values.data());
            int32_t* out = t.data<int32_t>();
            for (int64_t i = 0; i < n; ++i) {
                HSA_CHECK(values[i] <= static_cast<uint32_t>(std::numeric_limits<int32_t>::max()),
                          where << " (u32): value " << values[i] << " at element " << i << " does not fit i32");
                out[i] = static_cast<int32_t>(values[i]);
            }
        }
        return t;
    }
    HSA_FAIL(where << " has unsupported type " << type_name(type)
                   << " (supported: f32, f64, i8, i16, i32, i64, u8, u16, u32, u64)");
}

void Hdf5File::write_tensor(const std::string& path, const Tensor& tensor, Hdf5Type type) {
    require_writable("write_tensor");
    const std::string where = filename_ + ": dataset '" + path + "'";
    HSA_CHECK(!split_path(path).empty(), filename_ << ": cannot write a dataset at the root path '" << path << "'");
    HSA_CHECK(tensor.defined(), "cannot write " << where << ": the tensor is undefined");
    Tensor host = tensor.to(Device::CPU).contiguous();
    if (host.dtype() == DType::BF16) host = host.to(DType::F32);
    const bool tensor_is_float = host.dtype() == DType::F32;
    if (type == Hdf5Type::Auto)
        type = host.dtype() == DType::F32 ? Hdf5Type::F32 : host.dtype() == DType::I32 ? Hdf5Type::I32 : Hdf5Type::I64;
    const StoreType st = store_type(type);
    HSA_CHECK(!(tensor_is_float && !st.is_float),
              "cannot write " << where << ": a floating-point tensor cannot be stored as " << hdf5_type_name(type));
    const int64_t n = host.numel();
    if (!st.is_float) {
        if (host.dtype() == DType::I32) check_integer_range(host.data<int32_t>(), n, st, where, hdf5_type_name(type));
        else check_integer_range(host.data<int64_t>(), n, st, where, hdf5_type_name(type));
    }
    const hid_t memory_type = host.dtype() == DType::F32   ? H5T_NATIVE_FLOAT
                              : host.dtype() == DType::I32 ? H5T_NATIVE_INT32
                                                           : H5T_NATIVE_INT64;

    std::vector<hsize_t> dims(host.shape().begin(), host.shape().end());
    Handle space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                 H5Sclose);
    if (!space.ok()) HSA_FAIL("cannot write " << where << ": bad shape " << shape_string(host.shape()) << hdf5::error_detail());
    if (has(path)) {
        HSA_CHECK(is_dataset(path), "cannot write " << where << ": a group has that name");
        if (H5Ldelete(id_, path.c_str(), H5P_DEFAULT) < 0) HSA_FAIL("cannot replace " << where << hdf5::error_detail());
    }
    Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
    H5Pset_create_intermediate_group(lcpl, 1);
    Handle ds(H5Dcreate2(id_, path.c_str(), st.file_type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) HSA_FAIL("cannot create " << where << hdf5::error_detail());
    if (n > 0 && H5Dwrite(ds, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, host.raw_data()) < 0)
        HSA_FAIL("cannot write " << where << hdf5::error_detail());
}

// ---------------------------------------------------------------- attributes

namespace {
std::string attribute_where(const Hdf5File& file, const std::string& object, const std::string& name) {
    return file.filename() + ": attribute '" + name + "' of '" + object + "'";
}

Handle open_attribute(hid_t file, const Hdf5File& self, const std::string& object, const std::string& name) {
    HSA_CHECK(self.has(object), self.filename() << ": no object '" << object << "' (looking for attribute '" << name << "')");
    HSA_CHECK(self.has_attribute(object, name), self.filename() << ": no attribute '" << name << "' on '" << object << "'");
    const std::string obj = split_path(object).empty() ? "/" : object;
    Handle attr(H5Aopen_by_name(file, obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (!attr.ok()) HSA_FAIL("cannot open " << attribute_where(self, object, name) << hdf5::error_detail());
    Handle space(H5Aget_space(attr), H5Sclose);
    const hssize_t points = H5Sget_simple_extent_npoints(space);
    HSA_CHECK(points == 1, attribute_where(self, object, name) << " has " << points << " values, expected one");
    return attr;
}

// An integer-like attribute (integer or enum, e.g. h5py's bool) as int64.
int64_t read_integer_like(hid_t attr, hid_t type, const std::string& where) {
    if (H5Tget_class(type) == H5T_INTEGER) {
        if (H5Tget_sign(type) == H5T_SGN_NONE && H5Tget_size(type) == 8) {
            uint64_t value = 0;
            if (H5Aread(attr, H5T_NATIVE_UINT64, &value) < 0) HSA_FAIL("cannot read " << where << hdf5::error_detail());
            HSA_CHECK(value <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                      where << " is " << value << ", which does not fit i64");
            return static_cast<int64_t>(value);
        }
        int64_t value = 0;
        if (H5Aread(attr, H5T_NATIVE_INT64, &value) < 0) HSA_FAIL("cannot read " << where << hdf5::error_detail());
        return value;
    }
    // Enum: read the raw base integer and widen it.
    Handle native(H5Tget_native_type(type, H5T_DIR_ASCEND), H5Tclose);
    Handle base(H5Tget_super(type), H5Tclose);
    const size_t size = H5Tget_size(type);
    HSA_CHECK(native.ok() && base.ok() && size >= 1 && size <= 8, where << " has an unsupported enum type");
    unsigned char raw[8] = {0};
    if (H5Aread(attr, native, raw) < 0) HSA_FAIL("cannot read " << where << hdf5::error_detail());
    const bool is_signed = H5Tget_sign(base) != H5T_SGN_NONE;
    switch (size) {
        case 1: { int8_t s; uint8_t u; std::memcpy(&s, raw, 1); std::memcpy(&u, raw, 1); return is_signed ? s : u; }
        case 2: { int16_t s; uint16_t u; std::memcpy(&s, raw, 2); std::memcpy(&u, raw, 2); return is_signed ? s : u; }
        case 4: { int32_t s; uint32_t u; std::memcpy(&s, raw, 4); std::memcpy(&u, raw, 4); return is_signed ? s : static_cast<int64_t>(u); }
        default: { int64_t s; std::memcpy(&s, raw, 8); return s; }
    }
}
}  // namespace

bool Hdf5File::has_attribute(const std::string& object, const std::string& name) const {
    require_open("has_attribute");
    if (!has(object)) return false;
    const std::string obj = split_path(object).empty() ? "/" : object;
    const htri_t exists = H5Aexists_by_name(id_, obj.c_str(), name.c_str(), H5P_DEFAULT);
    H5Eclear2(H5E_DEFAULT);
    return exists > 0;
}

std::vector<std::string> Hdf5File::list_attributes(const std::string& object) const {
    require_open("list_attributes");
    HSA_CHECK(has(object), filename_ << ": no object '" << object << "'");
    Handle obj(H5Oopen(id_, split_path(object).empty() ? "/" : object.c_str(), H5P_DEFAULT), H5Oclose);
    if (!obj.ok()) HSA_FAIL(filename_ << ": cannot open '" << object << "'" << hdf5::error_detail());
    std::vector<std::string> names;
    if (H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attribute_name, &names) < 0)
        HSA_FAIL(filename_ << ": cannot list the attributes of '" << object << "'" << hdf5::error_detail());
    std::sort(names.begin(), names.end());
    return names;
}

std::string Hdf5File::read_string_attribute(const std::string& object, const std::string& name) const {
    require_open("read_string_attribute");
    const std::string where = attribute_where(*this, object, name);
    Handle attr = open_attribute(id_, *this, object, name);
    Handle type(H5Aget_type(attr), H5Tclose);
    HSA_CHECK(H5Tget_class(type) == H5T_STRING, where << " is " << type_name(type) << ", expected a string");
    if (H5Tis_variable_str(type) > 0) {
        Handle memory(H5Tcopy(H5T_C_S1), H5Tclose);
        H5Tset_size(memory, H5T_VARIABLE);
        H5Tset_cset(memory, H5Tget_cset(type));
        char* text = nullptr;
        if (H5Aread(attr, memory, &text) < 0) HSA_FAIL("cannot read " << where << hdf5::error_detail());
        std::string value = text ? text : "";
        if (text) H5free_memory(text);
        return value;
    }
    const size_t size = H5Tget_size(type);
    std::vector<char> buffer(size + 1, '\0');
    Handle memory(H5Tcopy(type), H5Tclose);
    if (H5Aread(attr, memory, buffer.data()) < 0) HSA_FAIL("cannot read " << where << hdf5::error_detail());
    std::string value(buffer.data(), strnlen(buffer.data(), size));
    if (H5Tget_strpad(type) == H5T_STR_SPACEPAD)
        while (!value.empty() && value.back() == ' ') value.pop_back();
    return value;
}

int64_t Hdf5File::read_int_attribute(const std::string& object, const std::string& name) const {
    require_open("read_int_attribute");
    const std::string where = attribute_where(*this, object, name);
    Handle attr = open_attribute(id_, *this, object, name);
    Handle type(H5Aget_type(attr), H5Tclose);
    const H5T_class_t cls = H5Tget_class(type);
    if (cls == H5T_INTEGER || cls == H5T_ENUM) return read_integer_like(attr, type, where);
    if (cls == H5T_FLOAT) {
        double value = 0;
        if (H5Aread(attr, H5T_NATIVE_DOUBLE, &value) < 0) HSA_FAIL("cannot read " << where << hdf5::error_detail());
        HSA_CHECK(std::isfinite(value) && value == std::floor(value) && std::fabs(value) < 9.2e18,
                  where << " is " << value << ", expected a whole number");
        return static_cast<int64_t>(value);
    }
    HSA_FAIL(where << " is " << type_name(type) << ", expected an integer");
}

double Hdf5File::read_float_attribute(const std::string& object, const std::string& name) const {
    require_open("read_float_attribute");
    const std::string where = attribute_where(*this, object, name);
    Handle attr = open_attribute(id_, *this, object, name);
    Handle type(H5Aget_type(attr), H5Tclose);
    const H5T_class_t cls = H5Tget_class(type);
    if (cls == H5T_ENUM) return static_cast<double>(read_integer_like(attr, type, where));
    HSA_CHECK(cls == H5T_FLOAT || cls == H5T_INTEGER, where << " is " << type_name(type) << ", expected a number");
    double value = 0;
    if (H5Aread(attr, H5T_NATIVE_DOUBLE, &value) < 0) HSA_FAIL("cannot read " << where << hdf5::error_detail());
    return value;
}

namespace {
void write_attribute(hid_t file, const Hdf5File& self, const std::string& object, const std::string& name, hid_t file_type,
                     hid_t memory_type, const void* value) {
    const std::string where = attribute_where(self, object, name);
    HSA_CHECK(!name.empty(), self.filename() << ": empty attribute name on '" << object << "'");
    HSA_CHECK(self.has(object), "cannot write " << where << ": no object '" << object << "'");
    Handle obj(H5Oopen(file, split_path(object).empty() ? "/" : object.c_str(), H5P_DEFAULT), H5Oclose);
    if (!obj.ok()) HSA_FAIL("cannot write " << where << hdf5::error_detail());
    if (H5Aexists(obj, name.c_str()) > 0 && H5Adelete(obj, name.c_str()) < 0) HSA_FAIL("cannot replace " << where << hdf5::error_detail());
    Handle space(H5Screate(H5S_SCALAR), H5Sclose);
    Handle attr(H5Acreate2(obj, name.c_str(), file_type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (!attr.ok()) HSA_FAIL("cannot create " << where << hdf5::error_detail());
    if (H5Awrite(attr, memory_type, value) < 0) HSA_FAIL("cannot write " << where << hdf5::error_detail());
}
}  // namespace

void Hdf5File::write_string_attribute(const std::string& object, const std::string& name, const std::string& value) {
    require_writable("write_string_attribute");
    Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    const char* text = value.c_str();
    write_attribute(id_, *this, object, name, type, type, &text);
}

void Hdf5File::write_int_attribute(const std::string& object, const std::string& name, int64_t value) {
    require_writable("write_int_attribute");
    write_attribute(id_, *this, object, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void Hdf5File::write_float_attribute(const std::string& object, const std::string& name, double value) {
    require_writable("write_float_attribute");
    write_attribute(id_, *this, object, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

}  // namespace hsa
