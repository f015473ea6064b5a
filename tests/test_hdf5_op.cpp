// Tests of core/hdf5_io.h (round trips, type conversions, attributes, one-line errors) and
// of `hsa op` (launch/op_runner.cpp): random inputs are written with Hdf5File, the real
// binary (HSA_BINARY_PATH) runs the op, and its output and gradients must equal, bit for
// bit, the same computation done here through core/ops.h and the tape.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cuda_allocator.h"
#include "core/hdf5_io.h"
#include "core/ops.h"
#include "tests/cli_runner.h"
#include "tests/file_test_util.h"
#include "tests/op_test_harness.h"

namespace hsa {
namespace {

// The message of the hsa::Error f throws ("" and a failure when it throws none).
template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    ADD_FAILURE() << "expected an hsa::Error";
    return "";
}

void expect_one_line_mentioning(const std::string& message, const std::vector<std::string>& mentions) {
    EXPECT_FALSE(message.empty());
    EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
    for (const auto& m : mentions) EXPECT_NE(message.find(m), std::string::npos) << "expected '" << m << "' in: " << message;
}

// Same dtype, same shape, same bytes.
void expect_bit_equal(const Tensor& got, const Tensor& want, const std::string& what) {
    ASSERT_TRUE(got.defined()) << what;
    ASSERT_TRUE(want.defined()) << what;
    ASSERT_EQ(got.dtype(), want.dtype()) << what;
    ASSERT_EQ(got.shape(), want.shape()) << what;
    Tensor a = got.to(Device::CPU).contiguous(), b = want.to(Device::CPU).contiguous();
    EXPECT_EQ(std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()), 0)
        << what << " differs: max |diff| " << test::max_abs_diff(a.to(DType::F32), b.to(DType::F32));
}

double sum_of_squares(const Tensor& t) {
    double s = 0;
    for (float v : t.to_vector()) s += static_cast<double>(v) * v;
    return s;
}

double relative_l2(const Tensor& got, const Tensor& want) {
    std::vector<float> a = got.to_vector(), b = want.to_vector();
    double diff = 0, norm = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
        norm += static_cast<double>(b[i]) * b[i];
    }
    return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

class TempDirTest : public ::testing::Test {
protected:
    void TearDown() override { Tape::current().clear(); }
    std::string path(const std::string& name) const { return dir_ / name; }
    test::TempFolder dir_{"hsa_hdf5_test"};
};

// ================================================================ Hdf5File

using Hdf5Io = TempDirTest;
using Hdf5Errors = TempDirTest;

TEST_F(Hdf5Io, TensorRoundTripsAreExact) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    Tensor f3 = rng.normal({3, 4, 5});
    Tensor f1 = rng.normal({17}, 100.0f);
    Tensor scalar = Tensor::scalar(static_cast<float>(rng.next_double() * 10 - 5));
    std::vector<int32_t> ints(12);
    for (auto& v : ints) v = static_cast<int32_t>(rng.next_int(-2147483647LL, 2147483647LL));
    Tensor i32 = Tensor::from_vector_i32(ints, {3, 4});
    Tensor i64 = Tensor::empty({2, 3}, DType::I64);
    for (int64_t i = 0; i < 6; ++i) i64.data<int64_t>()[i] = static_cast<int64_t>(rng.next_u64() >> 1) * (i % 2 ? -1 : 1);
    Tensor empty = Tensor::empty({0, 3});
    const std::string file = path("round.h5");
    {
        Hdf5File f(file, Hdf5Mode::Create);
        f.write_tensor("f3", f3);
        f.write_tensor("/f1", f1);
        f.write_tensor("scalar", scalar);
        f.write_tensor("ints/i32", i32);
        f.write_tensor("ints/deeper/i64", i64);
        f.write_tensor("empty", empty);
    }
    Hdf5File f(file);
    EXPECT_EQ(f.mode(), Hdf5Mode::Read);
    expect_bit_equal(f.read_tensor("f3"), f3, "f3");
    expect_bit_equal(f.read_tensor("f1"), f1, "f1");
    expect_bit_equal(f.read_tensor("/scalar"), scalar, "scalar");
    expect_bit_equal(f.read_tensor("ints/i32"), i32, "i32");
    expect_bit_equal(f.read_tensor("/ints/deeper/i64"), i64, "i64");
    Tensor e = f.read_tensor("empty");
    EXPECT_EQ(e.shape(), (Shape{0, 3}));
    EXPECT_EQ(f.read_tensor("scalar").ndim(), 0);

    EXPECT_EQ(f.dataset_shape("f3"), (Shape{3, 4, 5}));
    EXPECT_EQ(f.dataset_shape("scalar"), Shape{});
    EXPECT_EQ(f.dataset_type("f3"), "f32");
    EXPECT_EQ(f.dataset_type("ints/i32"), "i32");
    EXPECT_EQ(f.dataset_type("ints/deeper/i64"), "i64");
    EXPECT_TRUE(f.has("/"));
    EXPECT_TRUE(f.has("ints"));
    EXPECT_TRUE(f.has("/ints/deeper/i64"));
    EXPECT_FALSE(f.has("ints/deeper/nothing"));
    EXPECT_FALSE(f.has("nothing/at/all"));
    EXPECT_FALSE(f.has("f3/child"));  // below a dataset
    EXPECT_TRUE(f.is_group("ints/deeper"));
    EXPECT_FALSE(f.is_group("f3"));
    EXPECT_TRUE(f.is_dataset("f3"));
    EXPECT_FALSE(f.is_dataset("ints"));
    EXPECT_EQ(f.list("/"), (std::vector<std::string>{"empty", "f1", "f3", "ints", "scalar"}));
    EXPECT_EQ(f.list("ints"), (std::vector<std::string>{"deeper", "i32"}));
    EXPECT_EQ(f.list("/ints/deeper/"), (std::vector<std::string>{"i64"}));
}

TEST_F(Hdf5Io, ReadWriteReplacesDatasetsAndMoveKeepsTheFile) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const std::string file = path("rw.h5");
    Tensor first = rng.normal({2, 3}), second = rng.normal({5}), kept = rng.normal({4});
    {
        Hdf5File f(file, Hdf5Mode::Create);
        f.write_tensor("grads/q", first);
        f.write_tensor("kept", kept);
    }
    {
        Hdf5File f(file, Hdf5Mode::ReadWrite);
        expect_bit_equal(f.read_tensor("grads/q"), first, "before");
        f.write_tensor("grads/q", second);  // another shape
        f.create_group("empty/group");
        f.create_group("empty/group");  // already there: no-op
        Hdf5File moved = std::move(f);
        EXPECT_FALSE(f.is_open());
        EXPECT_TRUE(moved.is_open());
        moved.flush();
        moved.close();
        EXPECT_FALSE(moved.is_open());
    }
    Hdf5File f(file);
    expect_bit_equal(f.read_tensor("grads/q"), second, "replaced");
    expect_bit_equal(f.read_tensor("kept"), kept, "kept");
    EXPECT_TRUE(f.is_group("empty/group"));
    EXPECT_TRUE(f.list("empty/group").empty());
    // HDF5 refuses to truncate a file that is open; once closed, Create truncates.
    expect_one_line_mentioning(error_of([&] { Hdf5File again(file, Hdf5Mode::Create); }), {"cannot create HDF5 file", file});
    f.close();
    { Hdf5File again(file, Hdf5Mode::Create); }
    EXPECT_TRUE(Hdf5File(file).list("/").empty());
}

TEST_F(Hdf5Io, StorageTypesConvertOnRead) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const std::string file = path("types.h5");
    std::vector<int32_t> tokens(50);
    for (auto& t : tokens) t = static_cast<int32_t>(rng.next_int(0, 65536));
    Tensor t16 = Tensor::from_vector_i32(tokens, {50});
    std::vector<int32_t> small(9);
    for (auto& v : small) v = static_cast<int32_t>(rng.next_int(-128, 128));
    Tensor t8 = Tensor::from_vector_i32(small, {3, 3});
    Tensor big = Tensor::empty({3}, DType::I64);
    big.data<int64_t>()[0] = 0;
    big.data<int64_t>()[1] = 2147483647LL;
    big.data<int64_t>()[2] = 4000000000LL;  // above i32
    Tensor f = rng.normal({6}, 3.0f);
    Tensor first10 = Tensor::from_vector_i32(std::vector<int32_t>(tokens.begin(), tokens.begin() + 10), {10});
    Tensor fits = Tensor::empty({2}, DType::I64);
    fits.data<int64_t>()[0] = 0;
    fits.data<int64_t>()[1] = 2147483647LL;
    {
        Hdf5File h(file, Hdf5Mode::Create);
        h.write_tensor("u16", t16, Hdf5Type::U16);
        h.write_tensor("u32", first10, Hdf5Type::U32);
        h.write_tensor("i8", t8, Hdf5Type::I8);
        h.write_tensor("i16", t8, Hdf5Type::I16);
        h.write_tensor("u64", Tensor::from_vector_i32({1, 2, 3}, {3}), Hdf5Type::U64);
        h.write_tensor("big_u32", big, Hdf5Type::U32);
        h.write_tensor("ok_u32", fits, Hdf5Type::U32);
        h.write_tensor("f64", f, Hdf5Type::F64);
        // Values that do not fit are errors, not clamps.
        expect_one_line_mentioning(error_of([&] { h.write_tensor("bad", Tensor::from_vector_i32({1, 70000}, {2}), Hdf5Type::U16); }),
                                   {"u16", "70000", "element 1", "'bad'"});
        expect_one_line_mentioning(error_of([&] { h.write_tensor("bad", Tensor::from_vector_i32({-1}, {1}), Hdf5Type::U8); }),
                                   {"u8", "-1"});
        expect_one_line_mentioning(error_of([&] { h.write_tensor("bad", f, Hdf5Type::I32); }), {"floating-point", "i32"});
        EXPECT_FALSE(h.has("bad"));
    }
    Hdf5File h(file);
    EXPECT_EQ(h.dataset_type("u16"), "u16");
    EXPECT_EQ(h.dataset_type("i8"), "i8");
    EXPECT_EQ(h.dataset_type("f64"), "f64");
    EXPECT_EQ(h.dataset_type("u64"), "u64");
    expect_bit_equal(h.read_tensor("u16"), t16, "u16 -> i32");
    expect_bit_equal(h.read_tensor("i8"), t8, "i8 -> i32");
    expect_bit_equal(h.read_tensor("i16"), t8, "i16 -> i32");
    expect_bit_equal(h.read_tensor("u32"), first10, "u32 -> i32");
    Tensor u64 = h.read_tensor("u64");
    EXPECT_EQ(u64.dtype(), DType::I64);
    EXPECT_EQ(u64.to_vector(), (std::vector<float>{1, 2, 3}));
    Tensor ok = h.read_tensor("ok_u32");
    EXPECT_EQ(ok.dtype(), DType::I32);
    EXPECT_EQ(ok.data<int32_t>()[1], 2147483647);
    expect_one_line_mentioning(error_of([&] { h.read_tensor("big_u32"); }), {"big_u32", "4000000000", "does not fit i32"});
    // f64 is stored exactly (f32 -> f64) and read back rounded to the same f32.
    expect_bit_equal(h.read_tensor("f64"), f, "f64 -> f32");
}

TEST_F(Hdf5Io, Float64ValuesRoundToNearestF32) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const std::string file = path("f64.h5");
    std::vector<double> values(64);
    for (auto& v : values) v = (rng.next_double() - 0.5) * 1e3;
    {
        // Written with the C library directly, as numpy/h5py would write float64.
        hid_t fid = H5Fcreate(file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        ASSERT_GE(fid, 0);
        hsize_t dims[2] = {8, 8};
        hid_t space = H5Screate_simple(2, dims, nullptr);
        hid_t ds = H5Dcreate2(fid, "x", H5T_IEEE_F64BE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);  // big-endian too
        ASSERT_GE(H5Dwrite(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
        H5Dclose(ds);
        H5Sclose(space);
        H5Fclose(fid);
    }
    Tensor x = Hdf5File(file).read_tensor("x");
    ASSERT_EQ(x.dtype(), DType::F32);
    ASSERT_EQ(x.shape(), (Shape{8, 8}));
    for (int i = 0; i < 64; ++i) EXPECT_EQ(x.data<float>()[i], static_cast<float>(values[i])) << i;
}

TEST_F(Hdf5Io, Attributes) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const std::string file = path("attrs.h5");
    const int64_t big = static_cast<int64_t>(rng.next_u64() >> 2) * -1;
    const double x = rng.next_double() * 1e-3;
    std::string json = "{\"model\": {";
    while (json.size() < 100000) json += "\"field" + std::to_string(json.size()) + "\": " + std::to_string(rng.next_int(0, 1000)) + ", ";
    json += "\"end\": true}}";
    {
        Hdf5File f(file, Hdf5Mode::Create);
        f.write_string_attribute("/", "tokenizer", "gpt2 \xc3\xa9");  // UTF-8
        f.write_string_attribute("/", "config", json);  // larger than the 64 KiB compact limit
        f.write_int_attribute("/", "step", big);
        f.write_int_attribute("/", "eos", 50256);
        f.write_float_attribute("/", "lr", x);
        f.write_tensor("params/w", rng.normal({2, 2}));
        f.write_int_attribute("params/w", "shard", 3);
        f.write_int_attribute("/", "eos", 0);  // replaces
    }
    Hdf5File f(file);
    EXPECT_EQ(f.read_string_attribute("/", "tokenizer"), "gpt2 \xc3\xa9");
    EXPECT_EQ(f.read_string_attribute("/", "config"), json);
    EXPECT_EQ(f.read_int_attribute("/", "step"), big);
    EXPECT_EQ(f.read_int_attribute("/", "eos"), 0);
    EXPECT_EQ(f.read_float_attribute("/", "lr"), x);
    EXPECT_EQ(f.read_float_attribute("/", "eos"), 0.0);  // integers read as floats
    EXPECT_EQ(f.read_int_attribute("params/w", "shard"), 3);
    EXPECT_TRUE(f.has_attribute("/", "step"));
    EXPECT_FALSE(f.has_attribute("/", "shard"));
    EXPECT_FALSE(f.has_attribute("no/object", "step"));
    EXPECT_EQ(f.list_attributes("/"), (std::vector<std::string>{"config", "eos", "lr", "step", "tokenizer"}));
    EXPECT_EQ(f.list_attributes("params/w"), (std::vector<std::string>{"shard"}));
    expect_one_line_mentioning(error_of([&] { f.read_int_attribute("/", "tokenizer"); }),
                               {file, "'tokenizer'", "string", "expected an integer"});
    expect_one_line_mentioning(error_of([&] { f.read_string_attribute("/", "step"); }), {"'step'", "expected a string"});
    expect_one_line_mentioning(error_of([&] { f.read_int_attribute("/", "lr"); }), {"'lr'", "expected a whole number"});
    expect_one_line_mentioning(error_of([&] { f.read_int_attribute("/", "missing"); }), {file, "no attribute 'missing'"});
    expect_one_line_mentioning(error_of([&] { f.read_int_attribute("nowhere", "step"); }), {file, "no object 'nowhere'"});
}

TEST_F(Hdf5Io, AttributesWrittenByOtherTools) {
    // Fixed-length strings, 1-element arrays, small integer types and enums (h5py's bool).
    const std::string file = path("foreign.h5");
    {
        hid_t fid = H5Fcreate(file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        ASSERT_GE(fid, 0);
        hid_t scalar = H5Screate(H5S_SCALAR);
        hid_t fixed = H5Tcopy(H5T_C_S1);
        H5Tset_size(fixed, 12);
        H5Tset_strpad(fixed, H5T_STR_SPACEPAD);
        hid_t a = H5Acreate2(fid, "name", fixed, scalar, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, fixed, "stickbreak  ");
        H5Aclose(a);
        hsize_t one = 1;
        hid_t array1 = H5Screate_simple(1, &one, nullptr);
        a = H5Acreate2(fid, "vocab_size", H5T_STD_U16BE, array1, H5P_DEFAULT, H5P_DEFAULT);
        uint16_t vocab = 50000;
        H5Awrite(a, H5T_NATIVE_UINT16, &vocab);
        H5Aclose(a);
        hid_t boolean = H5Tenum_create(H5T_NATIVE_INT8);
        int8_t f = 0, t = 1;
        H5Tenum_insert(boolean, "FALSE", &f);
        H5Tenum_insert(boolean, "TRUE", &t);
        a = H5Acreate2(fid, "causal", boolean, scalar, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, boolean, &t);
        H5Aclose(a);
        hsize_t two = 2;
        hid_t array2 = H5Screate_simple(1, &two, nullptr);
        a = H5Acreate2(fid, "pair", H5T_STD_I32LE, array2, H5P_DEFAULT, H5P_DEFAULT);
        int32_t pair[2] = {1, 2};
        H5Awrite(a, H5T_NATIVE_INT32, pair);
        H5Aclose(a);
        H5Tclose(boolean);
        H5Tclose(fixed);
        H5Sclose(array1);
        H5Sclose(array2);
        H5Sclose(scalar);
        H5Fclose(fid);
    }
    Hdf5File h(file);
    EXPECT_EQ(h.read_string_attribute("/", "name"), "stickbreak");
    EXPECT_EQ(h.read_int_attribute("/", "vocab_size"), 50000);
    EXPECT_EQ(h.read_int_attribute("/", "causal"), 1);
    expect_one_line_mentioning(error_of([&] { h.read_int_attribute("/", "pair"); }), {"'pair'", "has 2 values, expected one"});
}

TEST_F(Hdf5Errors, MissingFileTextFileAndFolder) {
    const std::string missing = path("missing.h5");
    expect_one_line_mentioning(error_of([&] { Hdf5File f(missing); }), {missing, "does not exist"});
    expect_one_line_mentioning(error_of([&] { Hdf5File f(missing, Hdf5Mode::ReadWrite); }), {missing, "does not exist"});
    const std::string text = path("notes.h5");
    std::ofstream(text) << "this is a text file, not HDF5\n";
    expect_one_line_mentioning(error_of([&] { Hdf5File f(text); }), {text, "is not an HDF5 file"});
    const std::string empty = path("empty.h5");
    std::ofstream(empty).close();
    expect_one_line_mentioning(error_of([&] { Hdf5File f(empty); }), {empty, "is not an HDF5 file"});
    expect_one_line_mentioning(error_of([&] { Hdf5File f(dir_.path()); }), {dir_.path(), "folder"});
    const std::string nowhere = path("no/such/folder/out.h5");
    expect_one_line_mentioning(error_of([&] { Hdf5File f(nowhere, Hdf5Mode::Create); }),
                               {"cannot create HDF5 file", nowhere, "does not exist"});
}

TEST_F(Hdf5Errors, MissingDatasetsGroupsAndUnsupportedTypes) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const std::string file = path("data.h5");
    {
        Hdf5File f(file, Hdf5Mode::Create);
        f.write_tensor("grads/q", rng.normal({3}));
    }
    {
        // A fixed-length string dataset: not a tensor.
        hid_t fid = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
        ASSERT_GE(fid, 0);
        hid_t type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, 8);
        hsize_t n = 2;
        hid_t space = H5Screate_simple(1, &n, nullptr);
        hid_t ds = H5Dcreate2(fid, "answers", type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, "yes\0\0\0\0\0no\0\0\0\0\0\0");
        H5Dclose(ds);
        H5Sclose(space);
        H5Tclose(type);
        H5Fclose(fid);
    }
    Hdf5File f(file);
    expect_one_line_mentioning(error_of([&] { f.read_tensor("grad_out"); }), {file, "no dataset 'grad_out'"});
    expect_one_line_mentioning(error_of([&] { f.read_tensor("grads/k"); }), {file, "no dataset 'grads/k'"});
    expect_one_line_mentioning(error_of([&] { f.read_tensor("grads"); }), {file, "'grads' is a group"});
    expect_one_line_mentioning(error_of([&] { f.read_tensor("answers"); }), {file, "'answers'", "unsupported type string"});
    EXPECT_EQ(f.dataset_type("answers"), "string");
    expect_one_line_mentioning(error_of([&] { f.list("grads/q"); }), {file, "not a group"});
    expect_one_line_mentioning(error_of([&] { f.list("nothing"); }), {file, "no group 'nothing'"});
    // Read-only files refuse writes.
    expect_one_line_mentioning(error_of([&] { f.write_tensor("x", rng.normal({2})); }), {file, "read-only"});
    expect_one_line_mentioning(error_of([&] { f.write_int_attribute("/", "x", 1); }), {file, "read-only"});
    f.close();
    expect_one_line_mentioning(error_of([&] { f.read_tensor("grads/q"); }), {"closed file"});
    // A dataset cannot be written where a group is, nor below a dataset.
    Hdf5File w(file, Hdf5Mode::ReadWrite);
    expect_one_line_mentioning(error_of([&] { w.write_tensor("grads", rng.normal({2})); }), {"'grads'", "a group has that name"});
    expect_one_line_mentioning(error_of([&] { w.write_tensor("grads/q/x", rng.normal({2})); }), {"cannot create", "'grads/q/x'"});
    expect_one_line_mentioning(error_of([&] { w.write_tensor("u", Tensor()); }), {"undefined"});
}

// ================================================================ hsa op

using test::describe;
using test::RunResult;

using Named = std::map<std::string, Tensor>;

// The in-process truth: forward through ops, backward of sum(out * grad_out).
struct Reference {
    Tensor out;
    Named grads;
};

Reference reference(Named inputs, const std::vector<std::string>& differentiable, const std::function<Tensor(const Named&)>& f,
                    const Tensor& grad_out) {
    for (const auto& name : differentiable) {
        inputs.at(name) = inputs.at(name).clone();
        inputs.at(name).set_requires_grad(true);
    }
    Reference r;
    r.out = f(inputs);
    if (grad_out.defined()) {
        backward(ops::sum(ops::mul(r.out, grad_out)));
        for (const auto& name : differentiable) r.grads[name] = inputs.at(name).grad();
    }
    return r;
}

class OpRunnerTest : public TempDirTest {
protected:
    RunResult run(const std::vector<std::string>& args) {
        const std::string out = path("stdout" + std::to_string(calls_)), err = path("stderr" + std::to_string(calls_));
        ++calls_;
        // The child uses this process's OpenMP thread count, so reductions split alike.
        return test::run_hsa(args, out, err, "OMP_NUM_THREADS=" + std::to_string(omp_get_max_threads()) + " ");
    }

    // Writes the inputs (and grad_out when defined) to a fresh file; attrs adds attributes.
    std::string write_inputs(const std::string& name, const Named& inputs, const Tensor& grad_out,
                             const std::function<void(Hdf5File&)>& attrs = nullptr) {
        const std::string file = path(name);
        Hdf5File f(file, Hdf5Mode::Create);
        for (const auto& [key, t] : inputs) f.write_tensor(key, t);
        if (grad_out.defined()) f.write_tensor("grad_out", grad_out);
        if (attrs) attrs(f);
        return file;
    }

    // Runs `hsa op` and checks "out" and exactly the expected "grad/<name>" datasets, bit for bit.
    void run_and_compare(const std::string& op, const std::string& inputs_file, const Reference& want,
                         const std::string& device = "cpu") {
        const std::string out = path(op + "_" + device + "_out" + std::to_string(calls_) + ".h5");
        RunResult r = run({"op", op, "--inputs", inputs_file, "--out", out, "--device", device});
        ASSERT_EQ(r.code, 0) << describe(r);
        EXPECT_EQ(r.err, "");
        EXPECT_NE(r.out.find("op " + op + " on " + device), std::string::npos) << r.out;
        Hdf5File f(out);
        EXPECT_EQ(f.read_string_attribute("/", "op"), op);
        EXPECT_EQ(f.read_string_attribute("/", "device"), device);
        expect_bit_equal(f.read_tensor("out"), want.out, op + " out");
        if (want.out.dtype() == DType::F32) {
            EXPECT_GT(sum_of_squares(want.out), 0.0) << "a trivial test: out is all zeros";
        }
        std::vector<std::string> names;
        for (const auto& [name, g] : want.grads) {
            names.push_back(name);
            ASSERT_TRUE(g.defined()) << name;
            EXPECT_GT(sum_of_squares(g), 0.0) << "a trivial test: grad of " << name << " is all zeros";
            expect_bit_equal(f.read_tensor("grad/" + name), g, op + " grad/" + name);
        }
        if (names.empty()) {
            EXPECT_FALSE(f.has("grad"));
        } else {
            EXPECT_EQ(f.list("grad"), names);  // std::map keeps them sorted, as list() does
        }
    }

    int calls_ = 0;
};

using OpRunner = OpRunnerTest;
using OpRunnerCli = OpRunnerTest;
using OpRunnerCuda = OpRunnerTest;

TEST_F(OpRunner, RmsnormWithAndWithoutWeight) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    Named in{{"x", rng.normal({2, 5, 16})}, {"weight", rng.normal({16})}};
    Tensor g = rng.normal({2, 5, 16});
    const double eps = 1e-3;
    Reference want = reference(in, {"weight", "x"}, [&](const Named& t) { return ops::rmsnorm(t.at("x"), t.at("weight"), static_cast<float>(eps)); }, g);
    run_and_compare("rmsnorm", write_inputs("in.h5", in, g, [&](Hdf5File& f) { f.write_float_attribute("/", "eps", eps); }), want);

    Named only_x{{"x", in.at("x")}};
    Reference plain = reference(only_x, {"x"}, [&](const Named& t) { return ops::rmsnorm(t.at("x"), Tensor(), 1e-6f); }, g);
    run_and_compare("rmsnorm", write_inputs("plain.h5", only_x, g), plain);  // default eps, no weight
}

TEST_F(OpRunner, AttentionSlidingWindowGqa) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    Named in{{"q", rng.normal({2, 12, 4, 8})}, {"k", rng.normal({2, 12, 2, 8})}, {"v", rng.normal({2, 12, 2, 8})}};
    Tensor g = rng.normal({2, 12, 4, 8});
    AttentionSpan span{true, 5};
    Reference want = reference(in, {"k", "q", "v"}, [&](const Named& t) { return ops::local_attention(t.at("q"), t.at("k"), t.at("v"), span); }, g);
    run_and_compare("attention", write_inputs("in.h5", in, g, [](Hdf5File& f) {
                        f.write_int_attribute("/", "causal", 1);
                        f.write_int_attribute("/", "window", 5);
                    }), want);
    // Bidirectional, attributes left at... causal 0 given, window default.
    Reference bi = reference(in, {"k", "q", "v"}, [&](const Named& t) { return ops::local_attention(t.at("q"), t.at("k"), t.at("v"), AttentionSpan{false, 0}); }, g);
    run_and_compare("attention", write_inputs("bi.h5", in, g, [](Hdf5File& f) { f.write_int_attribute("/", "causal", 0); }), bi);
}

TEST_F(OpRunner, SelectChunksAndChunkWeights) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const int64_t S = 4, K = 3;
    Tensor qr = rng.normal({2, 24, 2, 8}), landmarks = rng.normal({2, 6, 2, 8});
    Named sel{{"qr", qr}, {"landmarks", landmarks}};
    Reference indices = reference(sel, {}, [&](const Named& t) { return ops::select_chunks(t.at("qr"), t.at("landmarks"), S, K); }, Tensor());
    ASSERT_EQ(indices.out.dtype(), DType::I32);
    run_and_compare("select_chunks", write_inputs("sel.h5", sel, Tensor(), [&](Hdf5File& f) {
                        f.write_int_attribute("/", "chunk_size", S);
                        f.write_int_attribute("/", "topk", K);
                    }), indices);

    Named in{{"qr", qr}, {"landmarks", landmarks}, {"indices", indices.out}};
    Tensor g = rng.normal({2, 24, 2, K});
    for (const char* kind : {"softmax", "stickbreak"}) {
        SCOPED_TRACE(kind);
        const WeightKind wk = std::string(kind) == "softmax" ? WeightKind::Softmax : WeightKind::StickBreak;
        Reference want = reference(in, {"landmarks", "qr"}, [&](const Named& t) {
            return ops::chunk_weights(t.at("qr"), t.at("landmarks"), t.at("indices"), wk);
        }, g);
        run_and_compare("chunk_weights", write_inputs(std::string(kind) + ".h5", in, g, [&](Hdf5File& f) {
                            f.write_string_attribute("/", "weights", kind);
                        }), want);
    }
}

TEST_F(OpRunner, HsaWithI64IndicesAndPadding) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const int64_t S = 4;
    // Tm = 16: 4 chunks; Hk = 2, Hr = 1; tokens 0..3 see no chunk (all padding).
    Tensor indices;
    {
        NoGradGuard no_grad;
        indices = ops::select_chunks(rng.normal({1, 16, 1, 8}), rng.normal({1, 4, 1, 8}), S, 2);
    }
    ASSERT_EQ(indices.data<int32_t>()[0], -1);
    Named in{{"q", rng.normal({1, 16, 4, 8})}, {"kmem", rng.normal({1, 16, 2, 8})}, {"vmem", rng.normal({1, 16, 2, 8})},
             {"indices", indices}, {"weights", rng.uniform({1, 16, 1, 2}, 0.1f, 1.0f)}};
    Tensor g = rng.normal({1, 16, 4, 8});
    Reference want = reference(in, {"kmem", "q", "vmem", "weights"}, [&](const Named& t) {
        return ops::hsa_attention(t.at("q"), t.at("kmem"), t.at("vmem"), t.at("indices"), t.at("weights"), S);
    }, g);
    Named stored = in;
    stored.erase("indices");
    const std::string file = write_inputs("in.h5", stored, g, [&](Hdf5File& f) {
        f.write_tensor("indices", indices, Hdf5Type::I64);  // as numpy's default int64
        f.write_int_attribute("/", "chunk_size", S);
    });
    run_and_compare("hsa", file, want);
}

TEST_F(OpRunner, CrossEntropyMaskedIgnoredAndScalarGradOut) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const int64_t N = 10, V = 7;
    std::vector<int32_t> targets(N);
    for (auto& t : targets) t = static_cast<int32_t>(rng.next_int(0, V));
    targets[3] = -1;  // ignored
    Named in{{"logits", rng.normal({N, V}, 2.0f)}, {"targets", Tensor::from_vector_i32(targets, {N})},
             {"mask", rng.uniform({N}, 0.0f, 1.0f)}};
    Tensor g = Tensor::scalar(static_cast<float>(0.5 + rng.next_double()));
    Reference want = reference(in, {"logits"}, [&](const Named& t) { return ops::cross_entropy(t.at("logits"), t.at("targets"), t.at("mask")); }, g);
    run_and_compare("cross_entropy", write_inputs("in.h5", in, g), want);

    // No mask, no grad_out (the default is 1).
    Named plain = in;
    plain.erase("mask");
    Reference unit = reference(plain, {"logits"}, [&](const Named& t) { return ops::cross_entropy(t.at("logits"), t.at("targets")); },
                               Tensor::scalar(1.0f));
    run_and_compare("cross_entropy", write_inputs("plain.h5", plain, Tensor()), unit);
}

TEST_F(OpRunner, MatmulTransposedAndSharedBatch) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    // a [B, K, M] used transposed, b [K, N] shared over the batch: out [B, M, N].
    Named in{{"a", rng.normal({3, 4, 5})}, {"b", rng.normal({4, 6})}};
    Tensor g = rng.normal({3, 5, 6});
    Reference want = reference(in, {"a", "b"}, [&](const Named& t) { return ops::matmul(t.at("a"), t.at("b"), true, false); }, g);
    run_and_compare("matmul", write_inputs("in.h5", in, g, [](Hdf5File& f) { f.write_int_attribute("/", "transpose_a", 1); }), want);

    Named nt{{"a", rng.normal({5, 4})}, {"b", rng.normal({6, 4})}};
    Tensor g2 = rng.normal({5, 6});
    Reference want2 = reference(nt, {"a", "b"}, [&](const Named& t) { return ops::matmul(t.at("a"), t.at("b"), false, true); }, g2);
    run_and_compare("matmul", write_inputs("nt.h5", nt, g2, [](Hdf5File& f) { f.write_int_attribute("/", "transpose_b", 1); }), want2);
}

TEST_F(OpRunner, EmbeddingRopeSwiglu) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    std::vector<int32_t> ids(12);
    for (auto& i : ids) i = static_cast<int32_t>(rng.next_int(0, 11));
    Tensor table = rng.normal({11, 6}), id = Tensor::from_vector_i32(ids, {3, 4});
    Tensor g = rng.normal({3, 4, 6});
    Reference emb = reference({{"table", table}, {"ids", id}}, {"table"}, [&](const Named& t) { return ops::embedding(t.at("table"), t.at("ids")); }, g);
    const std::string emb_file = write_inputs("emb.h5", {{"table", table}}, g, [&](Hdf5File& f) { f.write_tensor("ids", id, Hdf5Type::U16); });
    run_and_compare("embedding", emb_file, emb);

    Tensor x = rng.normal({2, 6, 2, 8}), gx = rng.normal({2, 6, 2, 8});
    Reference rope = reference({{"x", x}}, {"x"}, [&](const Named& t) { return ops::rope(t.at("x"), 5, 500.0f); }, gx);
    run_and_compare("rope", write_inputs("rope.h5", {{"x", x}}, gx, [](Hdf5File& f) {
                        f.write_int_attribute("/", "position_offset", 5);
                        f.write_float_attribute("/", "base", 500.0);
                    }), rope);

    Named sw{{"gate", rng.normal({4, 9})}, {"up", rng.normal({4, 9})}};
    Tensor gs = rng.normal({4, 9});
    Reference swiglu = reference(sw, {"gate", "up"}, [&](const Named& t) { return ops::swiglu(t.at("gate"), t.at("up")); }, gs);
    run_and_compare("swiglu", write_inputs("swiglu.h5", sw, gs), swiglu);
}

// The fused ops (swiglu_mlp, add_rmsnorm, rmsnorm_rope, linear_cross_entropy): the same outputs and
// gradients as the ops they fuse, from files.
TEST_F(OpRunner, FusedOpsEqualTheOpsTheyFuse) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    Named mlp{{"x", rng.normal({2, 3, 6})}, {"w1", rng.normal({6, 10})}, {"w3", rng.normal({6, 10})}, {"w2", rng.normal({10, 6})}};
    Tensor gm = rng.normal({2, 3, 6});
    Reference want_mlp = reference(mlp, {"x", "w1", "w3", "w2"}, [&](const Named& t) {
        return ops::linear(ops::swiglu(ops::linear(t.at("x"), t.at("w1")), ops::linear(t.at("x"), t.at("w3"))), t.at("w2"));
    }, gm);
    run_and_compare("swiglu_mlp", write_inputs("mlp.h5", mlp, gm), want_mlp);
    // With the optional residual: residual + the MLP, and the residual's gradient too.
    Named mlp_res = mlp;
    mlp_res.emplace("residual", rng.normal({2, 3, 6}));
    Reference want_mlp_res = reference(mlp_res, {"x", "w1", "w3", "w2", "residual"}, [&](const Named& t) {
        return ops::add(t.at("residual"), ops::linear(ops::swiglu(ops::linear(t.at("x"), t.at("w1")),
                                                                  ops::linear(t.at("x"), t.at("w3"))),
                                                      t.at("w2")));
    }, gm);
    run_and_compare("swiglu_mlp", write_inputs("mlp_res.h5", mlp_res, gm), want_mlp_res);

    Named res{{"x", rng.normal({2, 3, 8})}, {"a", rng.normal({2, 3, 8})}, {"weight", rng.normal({8})}};
    Tensor gr = rng.normal({2, 3, 8});
    Reference want_res = reference(res, {"x", "a", "weight"}, [&](const Named& t) {
        return ops::rmsnorm(ops::add(t.at("x"), t.at("a")), t.at("weight"), 1e-5f);
    }, gr);
    run_and_compare("add_rmsnorm", write_inputs("res.h5", res, gr, [](Hdf5File& f) {
                        f.write_float_attribute("/", "eps", 1e-5);
                    }), want_res);

    Named qk{{"x", rng.normal({2, 5, 3, 8})}, {"weight", rng.normal({8})}};
    Tensor gq = rng.normal({2, 5, 3, 8});
    Reference want_qk = reference(qk, {"x", "weight"}, [&](const Named& t) {
        return ops::rope(ops::rmsnorm(t.at("x"), t.at("weight"), 1e-5f), 11, 1000.0f);
    }, gq);
    run_and_compare("rmsnorm_rope", write_inputs("qk.h5", qk, gq, [](Hdf5File& f) {
                        f.write_float_attribute("/", "eps", 1e-5);
                        f.write_int_attribute("/", "position_offset", 11);
                        f.write_float_attribute("/", "base", 1000.0);
                    }), want_qk);

    const int64_t N = 9, D = 5, V = 7;
    std::vector<int32_t> targets(N);
    for (auto& t : targets) t = static_cast<int32_t>(rng.next_int(0, V));
    targets[2] = -1;  // ignored
    Named head{{"x", rng.normal({N, D})}, {"weight", rng.normal({V, D})}, {"targets", Tensor::from_vector_i32(targets, {N})},
               {"mask", rng.uniform({N}, 0.0f, 1.0f)}};
    Tensor g = Tensor::scalar(static_cast<float>(0.5 + rng.next_double()));
    Reference want_head = reference(head, {"x", "weight"}, [&](const Named& t) {
        return ops::cross_entropy(ops::matmul(t.at("x"), t.at("weight"), false, true), t.at("targets"), t.at("mask"));
    }, g);
    run_and_compare("linear_cross_entropy", write_inputs("head.h5", head, g, [](Hdf5File& f) {
                        f.write_int_attribute("/", "transpose_weight", 1);
                    }), want_head);
}

// ---- CUDA: the same files through --device cuda agree with the CPU ----

TEST_F(OpRunnerCuda, HsaAttentionAndFusedOpsMatchCpu) {
    if (!cuda_available()) GTEST_SKIP() << "no GPU visible: --device cuda is checked on the GPU machine";
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const int64_t S = 8;
    Tensor indices;
    {
        NoGradGuard no_grad;
        indices = ops::select_chunks(rng.normal({2, 64, 2, 16}), rng.normal({2, 8, 2, 16}), S, 3);
    }
    std::vector<std::pair<std::string, std::string>> cases;
    Named hsa_in{{"q", rng.normal({2, 64, 4, 16})}, {"kmem", rng.normal({2, 64, 2, 16})}, {"vmem", rng.normal({2, 64, 2, 16})},
                 {"indices", indices}, {"weights", rng.uniform({2, 64, 2, 3}, 0.1f, 1.0f)}};
    cases.emplace_back("hsa", write_inputs("hsa.h5", hsa_in, rng.normal({2, 64, 4, 16}), [&](Hdf5File& f) {
                           f.write_int_attribute("/", "chunk_size", S);
                       }));
    Named att{{"q", rng.normal({2, 48, 4, 16})}, {"k", rng.normal({2, 48, 1, 16})}, {"v", rng.normal({2, 48, 1, 16})}};
    cases.emplace_back("attention", write_inputs("att.h5", att, rng.normal({2, 48, 4, 16}), [](Hdf5File& f) {
                           f.write_int_attribute("/", "window", 16);
                       }));
    Named mlp{{"x", rng.normal({2, 8, 16})}, {"w1", rng.normal({16, 40})}, {"w3", rng.normal({16, 40})},
              {"w2", rng.normal({40, 16})}};
    cases.emplace_back("swiglu_mlp", write_inputs("mlp.h5", mlp, rng.normal({2, 8, 16})));
    Named res{{"x", rng.normal({3, 5, 520})}, {"a", rng.normal({3, 5, 520})}, {"weight", rng.normal({520})}};
    cases.emplace_back("add_rmsnorm", write_inputs("res.h5", res, rng.normal({3, 5, 520})));  // the fused kernel's rows
    std::vector<int32_t> targets(24);
    for (auto& t : targets) t = static_cast<int32_t>(rng.next_int(0, 40));
    Named head{{"x", rng.normal({24, 16})}, {"weight", rng.normal({16, 40})}, {"targets", Tensor::from_vector_i32(targets, {24})}};
    cases.emplace_back("linear_cross_entropy", write_inputs("head.h5", head, Tensor()));
    for (const auto& [op, file] : cases) {
        SCOPED_TRACE(op);
        const std::string cpu = path(op + "_cpu.h5"), gpu = path(op + "_gpu.h5");
        RunResult a = run({"op", op, "--inputs", file, "--out", cpu, "--device", "cpu"});
        ASSERT_EQ(a.code, 0) << describe(a);
        RunResult b = run({"op", op, "--inputs", file, "--out", gpu, "--device", "cuda"});
        ASSERT_EQ(b.code, 0) << describe(b);
        Hdf5File fc(cpu), fg(gpu);
        EXPECT_EQ(fg.read_string_attribute("/", "device"), "cuda");
        std::vector<std::string> names{"out"};
        for (const auto& g : fc.list("grad")) names.push_back("grad/" + g);
        EXPECT_EQ(fc.list("grad"), fg.list("grad"));
        for (const auto& name : names) {
            Tensor want = fc.read_tensor(name), got = fg.read_tensor(name);
            ASSERT_EQ(got.shape(), want.shape()) << name;
            EXPECT_GT(sum_of_squares(want), 0.0) << name;
            EXPECT_LE(relative_l2(got, want), 2e-5) << name;
        }
    }
}

// ---- command-line errors: exit 2, exactly one line on stderr ----

void expect_error(const RunResult& r, int code, const std::vector<std::string>& mentions) {
    EXPECT_EQ(r.out, "") << describe(r);
    test::expect_error_line(r, code, mentions);
}

TEST_F(OpRunnerCli, HelpListsEveryOp) {
    RunResult help = run({"op", "--help"});
    EXPECT_EQ(help.code, 0) << describe(help);
    EXPECT_EQ(help.err, "");
    for (const char* word : {"usage: hsa op", "--inputs", "--out", "--device", "grad_out", "embedding", "matmul", "rmsnorm",
                             "rope", "rmsnorm_rope", "add_rmsnorm", "swiglu", "swiglu_mlp", "attention", "select_chunks", "chunk_weights", "hsa",
                             "cross_entropy", "linear_cross_entropy",
                             "exit codes"})
        EXPECT_NE(help.out.find(word), std::string::npos) << word << "\n" << help.out;
    RunResult bare = run({"op"});
    EXPECT_EQ(bare.code, 2) << describe(bare);
    EXPECT_NE(bare.out.find("usage: hsa op"), std::string::npos);
    RunResult main_help = run({"--help"});
    EXPECT_NE(main_help.out.find("\n  op "), std::string::npos) << main_help.out;
}

TEST_F(OpRunnerCli, BadArgumentsAndFiles) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const std::string out = path("out.h5");
    const std::string good = write_inputs("good.h5", {{"x", rng.normal({2, 4})}}, rng.normal({2, 4}));
    expect_error(run({"op", "frobnicate", "--inputs", good, "--out", out}), 2, {"unknown op 'frobnicate'", "rmsnorm"});
    expect_error(run({"op", "rmsnorm", "--out", out}), 2, {"--inputs"});
    expect_error(run({"op", "rmsnorm", "--inputs", good}), 2, {"--out"});
    expect_error(run({"op", "rmsnorm", "--inputs"}), 2, {"--inputs needs a value"});
    expect_error(run({"op", "rmsnorm", "--inputs", good, "--out", out, "--device", "tpu"}), 2, {"tpu"});
    expect_error(run({"op", "rmsnorm", "--inputs", good, "--out", out, "--fast"}), 2, {"--fast"});
    expect_error(run({"op", "rmsnorm", "swiglu", "--inputs", good, "--out", out}), 2, {"swiglu"});
    const std::string missing = path("missing.h5");
    expect_error(run({"op", "rmsnorm", "--inputs", missing, "--out", out}), 2, {missing, "does not exist"});
    const std::string text = path("text.h5");
    std::ofstream(text) << "x = [1, 2, 3]\n";
    expect_error(run({"op", "rmsnorm", "--inputs", text, "--out", out}), 2, {text, "not an HDF5 file"});
    expect_error(run({"op", "rmsnorm", "--inputs", good, "--out", path("no/folder/out.h5")}), 2, {"no/folder"});
    EXPECT_FALSE(std::filesystem::exists(out)) << "no output is written after an error";
    RunResult ok = run({"op", "rmsnorm", "--inputs", good, "--out", out});
    EXPECT_EQ(ok.code, 0) << describe(ok);
}

TEST_F(OpRunnerCli, BadInputDatasets) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const std::string out = path("out.h5");
    auto op = [&](const std::string& name, const std::string& file) { return run({"op", name, "--inputs", file, "--out", out}); };
    Tensor x = rng.normal({3, 8});
    // Missing input dataset, missing grad_out.
    std::string f = write_inputs("no_x.h5", {{"weight", rng.normal({8})}}, rng.normal({3, 8}));
    expect_error(op("rmsnorm", f), 2, {"op rmsnorm", f, "no dataset 'x'"});
    f = write_inputs("no_grad.h5", {{"x", x}}, Tensor());
    expect_error(op("rmsnorm", f), 2, {f, "no dataset 'grad_out'"});
    // Shapes the op rejects, and a grad_out of the wrong shape.
    f = write_inputs("bad_weight.h5", {{"x", x}, {"weight", rng.normal({9})}}, rng.normal({3, 8}));
    expect_error(op("rmsnorm", f), 2, {"op rmsnorm", "rmsnorm"});
    f = write_inputs("bad_grad.h5", {{"x", x}}, rng.normal({8, 3}));
    expect_error(op("rmsnorm", f), 2, {"grad_out", "[8,3]", "[3,8]"});
    f = write_inputs("bad_attention.h5", {{"q", rng.normal({1, 4, 3, 8})}, {"k", rng.normal({1, 4, 2, 8})}, {"v", rng.normal({1, 4, 2, 8})}},
                     rng.normal({1, 4, 3, 8}));
    expect_error(op("attention", f), 2, {"op attention", "not a multiple"});
    // A dataset that is not an input (a typo), and integers where floats belong and back.
    f = write_inputs("typo.h5", {{"x", x}, {"wieght", rng.normal({8})}}, rng.normal({3, 8}));
    expect_error(op("rmsnorm", f), 2, {"'wieght' is not an input of rmsnorm"});
    f = write_inputs("int_x.h5", {{"x", Tensor::from_vector_i32({1, 2, 3}, {1, 3})}}, rng.normal({1, 3}));
    expect_error(op("rmsnorm", f), 2, {"'x'", "expected floating point"});
    f = write_inputs("float_ids.h5", {{"table", rng.normal({5, 2})}, {"ids", rng.normal({3})}}, rng.normal({3, 2}));
    expect_error(op("embedding", f), 2, {"'ids'", "expected integers"});
    // Index values out of range are caught before any kernel sees them.
    f = write_inputs("bad_ids.h5", {{"table", rng.normal({5, 2})}, {"ids", Tensor::from_vector_i32({0, 5, 1}, {3})}},
                     rng.normal({3, 2}));
    expect_error(op("embedding", f), 2, {"ids element 1 is 5", "[0, 5)"});
    f = write_inputs("bad_targets.h5", {{"logits", rng.normal({2, 3})}, {"targets", Tensor::from_vector_i32({0, 3}, {2})}}, Tensor());
    expect_error(op("cross_entropy", f), 2, {"targets element 1 is 3"});
}

TEST_F(OpRunnerCli, BadAttributes) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const std::string out = path("out.h5");
    auto op = [&](const std::string& name, const std::string& file) { return run({"op", name, "--inputs", file, "--out", out}); };
    Named sel{{"qr", rng.normal({1, 8, 1, 4})}, {"landmarks", rng.normal({1, 2, 1, 4})}};
    std::string f = write_inputs("no_topk.h5", sel, Tensor(), [](Hdf5File& h) { h.write_int_attribute("/", "chunk_size", 4); });
    expect_error(op("select_chunks", f), 2, {"missing attribute 'topk'"});
    Tensor indices = Tensor::from_vector_i32(std::vector<int32_t>(8, -1), {1, 8, 1, 1});
    Named cw{{"qr", sel.at("qr")}, {"landmarks", sel.at("landmarks")}, {"indices", indices}};
    f = write_inputs("bad_kind.h5", cw, rng.normal({1, 8, 1, 1}), [](Hdf5File& h) { h.write_string_attribute("/", "weights", "uniform"); });
    expect_error(op("chunk_weights", f), 2, {"'weights'", "uniform", "stickbreak"});
    f = write_inputs("kind_int.h5", cw, rng.normal({1, 8, 1, 1}), [](Hdf5File& h) { h.write_int_attribute("/", "weights", 1); });
    expect_error(op("chunk_weights", f), 2, {"'weights'", "expected a string"});
    Named cw_bad = cw;
    cw_bad.at("indices") = Tensor::from_vector_i32({-1, -1, -1, -1, 0, 1, 2, -1}, {1, 8, 1, 1});
    f = write_inputs("bad_index.h5", cw_bad, rng.normal({1, 8, 1, 1}));
    expect_error(op("chunk_weights", f), 2, {"indices element 6 is 2", "-1 or"});
    Named att{{"q", rng.normal({1, 4, 2, 8})}, {"k", rng.normal({1, 4, 2, 8})}, {"v", rng.normal({1, 4, 2, 8})}};
    f = write_inputs("causal2.h5", att, rng.normal({1, 4, 2, 8}), [](Hdf5File& h) { h.write_int_attribute("/", "causal", 2); });
    expect_error(op("attention", f), 2, {"'causal'", "0 or 1"});
    f = write_inputs("window.h5", att, rng.normal({1, 4, 2, 8}), [](Hdf5File& h) { h.write_float_attribute("/", "window", 2.5); });
    expect_error(op("attention", f), 2, {"'window'", "whole number"});
}

TEST_F(OpRunnerCli, CudaWithoutGpuIsAnError) {
    if (cuda_available()) GTEST_SKIP() << "a GPU is visible: OpRunnerCuda covers --device cuda";
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const std::string f = write_inputs("in.h5", {{"x", rng.normal({2, 4})}}, rng.normal({2, 4}));
    expect_error(run({"op", "rmsnorm", "--inputs", f, "--out", path("out.h5"), "--device", "cuda"}), 2, {"no GPU"});
}

}  // namespace
}  // namespace hsa
