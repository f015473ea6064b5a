#include "launch/op_runner.h"

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <sstream>

#include "core/autograd.h"
#include "core/cuda_allocator.h"
#include "core/hdf5_io.h"
#include "core/model/config.h"
#include "core/ops.h"

namespace hsa {
namespace {

// Grad: f32, differentiable (its gradient is written); Float: f32, no gradient; Int: i32.
enum class Kind { Grad, Float, Int };
struct InputSpec {
    std::string name;
    Kind kind;
    bool optional;
    std::string shape;
};

enum class AttrType { Int, Bool, Float, String };
struct AttrSpec {
    std::string name;
    AttrType type;
    std::string default_value;  // empty: required
    std::string doc;
};

// Whether the op reads the upstream gradient "grad_out".
enum class GradOut { Required, Optional, None };

struct Attrs {
    std::map<std::string, int64_t> ints;
    std::map<std::string, double> floats;
    std::map<std::string, std::string> strings;
    int64_t i(const std::string& name) const { return ints.at(name); }
    double f(const std::string& name) const { return floats.at(name); }
    const std::string& s(const std::string& name) const { return strings.at(name); }
};

using Inputs = std::map<std::string, Tensor>;

struct OpDef {
    std::string name;
    std::string summary;
    std::vector<InputSpec> inputs;
    std::vector<AttrSpec> attrs;
    std::string out_shape;
    GradOut grad_out;
    // Value checks on the host copies (index ranges: the CUDA kernels trust them). May be empty.
    std::function<void(const Inputs&, const Attrs&)> check;
    std::function<Tensor(const Inputs&, const Attrs&)> forward;
};

Tensor optional_input(const Inputs& in, const std::string& name) {
    auto it = in.find(name);
    return it == in.end() ? Tensor() : it->second;
}

// Every element of an i32 tensor in [low, high) (or == allowed_extra, e.g. -1 padding).
void check_range(const Tensor& t, const std::string& what, int64_t low, int64_t high, bool allow_minus_one = false,
                 bool allow_negative = false) {
    const int32_t* v = t.data<int32_t>();
    for (int64_t i = 0; i < t.numel(); ++i) {
        if (allow_minus_one && v[i] == -1) continue;
        if (allow_negative && v[i] < 0) continue;
        if (v[i] < low || v[i] >= high) {
            std::ostringstream s;
            s << what << " element " << i << " is " << v[i] << ", expected " << (allow_minus_one ? "-1 or " : "")
              << (allow_negative ? "negative (ignored) or " : "") << "a value in [" << low << ", " << high << ")";
            throw ConfigError(s.str());
        }
    }
}

const std::vector<OpDef>& op_table() {
    static const std::vector<OpDef> table = [] {
        std::vector<OpDef> ops;
        ops.push_back({"embedding", "rows of a table",
                       {{"table", Kind::Grad, false, "[V, D]"}, {"ids", Kind::Int, false, "[...] in [0, V)"}},
                       {},
                       "[..., D]",
                       GradOut::Required,
                       [](const Inputs& in, const Attrs&) {
                           const Tensor& table = in.at("table");
                           if (table.ndim() == 2) check_range(in.at("ids"), "ids", 0, table.size(0));
                       },
                       [](const Inputs& in, const Attrs&) { return ops::embedding(in.at("table"), in.at("ids")); }});
        ops.push_back({"matmul", "op(a) . op(b), batched",
                       {{"a", Kind::Grad, false, "[M, K] or [B, M, K] ([K, M] / [B, K, M] when transpose_a)"},
                        {"b", Kind::Grad, false, "[K, N] or [B, K, N] ([N, K] / [B, N, K] when transpose_b)"}},
                       {{"transpose_a", AttrType::Bool, "0", "0 or 1"}, {"transpose_b", AttrType::Bool, "0", "0 or 1"}},
                       "[M, N] or [B, M, N]",
                       GradOut::Required,
                       nullptr,
                       [](const Inputs& in, const Attrs& a) {
                           return ops::matmul(in.at("a"), in.at("b"), a.i("transpose_a") != 0, a.i("transpose_b") != 0);
                       }});
        ops.push_back({"rmsnorm", "RMSNorm over the last dim",
                       {{"x", Kind::Grad, false, "[..., D]"}, {"weight", Kind::Grad, true, "[D] (absent: no weight)"}},
                       {{"eps", AttrType::Float, "1e-6", "added to the mean square"}},
                       "[..., D]",
                       GradOut::Required,
                       nullptr,
                       [](const Inputs& in, const Attrs& a) {
                           return ops::rmsnorm(in.at("x"), optional_input(in, "weight"), static_cast<float>(a.f("eps")));
                       }});
        ops.push_back({"add_rmsnorm", "the residual add then RMSNorm, as one op (out: the normalised sum)",
                       {{"x", Kind::Grad, false, "[..., D]"}, {"a", Kind::Grad, false, "same as x"},
                        {"weight", Kind::Grad, true, "[D] (absent: no weight)"}},
                       {{"eps", AttrType::Float, "1e-6", "added to the mean square"}},
                       "[..., D]",
                       GradOut::Required,
                       nullptr,
                       [](const Inputs& in, const Attrs& a) {
                           return ops::add_rmsnorm(in.at("x"), in.at("a"), optional_input(in, "weight"),
                                                   static_cast<float>(a.f("eps")))
                               .second;
                       }});
        ops.push_back({"rope", "rotary position embedding, rotate-half",
                       {{"x", Kind::Grad, false, "[B, T, H, d], d even"}},
                       {{"position_offset", AttrType::Int, "0", "position of token 0"},
                        {"base", AttrType::Float, "10000", "frequency base"}},
                       "[B, T, H, d]",
                       GradOut::Required,
                       nullptr,
                       [](const Inputs& in, const Attrs& a) {
                           return ops::rope(in.at("x"), a.i("position_offset"), static_cast<float>(a.f("base")));
                       }});
        ops.push_back({"rmsnorm_rope", "RMSNorm over the head dim then RoPE, as one op (the q / k path)",
                       {{"x", Kind::Grad, false, "[B, T, H, d], d even"}, {"weight", Kind::Grad, true, "[d] (absent: no weight)"}},
                       {{"eps", AttrType::Float, "1e-6", "added to the mean square"},
                        {"position_offset", AttrType::Int, "0", "position of token 0"},
                        {"base", AttrType::Float, "10000", "frequency base"}},
                       "[B, T, H, d]",
                       GradOut::Required,
                       nullptr,
                       [](const Inputs& in, const Attrs& a) {
                           return ops::rmsnorm_rope(in.at("x"), optional_input(in, "weight"), static_cast<float>(a.f("eps")),
                                                    a.i("position_offset"), static_cast<float>(a.f("base")));
                       }});
        ops.push_back({"swiglu", "silu(gate) * up",
                       {{"gate", Kind::Grad, false, "[...]"}, {"up", Kind::Grad, false, "same as gate"}},
                       {},
                       "same as gate",
                       GradOut::Required,
                       nullptr,
                       [](const Inputs& in, const Attrs&) { return ops::swiglu(in.at("gate"), in.at("up")); }});
        ops.push_back({"swiglu_mlp", "the SwiGLU MLP as one op: residual + (silu(x w1) * (x w3)) w2",
                       {{"x", Kind::Grad, false, "[..., D]"},
                        {"w1", Kind::Grad, false, "[D, F]"},
                        {"w3", Kind::Grad, false, "[D, F]"},
                        {"w2", Kind::Grad, false, "[F, D]"},
                        {"residual", Kind::Grad, true, "[..., D] like x (absent: no add)"}},
                       {},
                       "[..., D]",
                       GradOut::Required,
                       nullptr,
                       [](const Inputs& in, const Attrs&) {
                           return ops::swiglu_mlp(in.at("x"), in.at("w1"), in.at("w3"), in.at("w2"),
                                                  optional_input(in, "residual"));
                       }});
        ops.push_back({"attention", "local (sliding-window causal or bidirectional) attention, GQA, scale 1/sqrt(d)",
                       {{"q", Kind::Grad, false, "[B, T, H, d]"},
                        {"k", Kind::Grad, false, "[B, T, Hk, d], H % Hk == 0"},
                        {"v", Kind::Grad, false, "[B, T, Hk, d]"}},
                       {{"causal", AttrType::Bool, "1", "1 causal, 0 bidirectional"},
                        {"window", AttrType::Int, "0", "causal window in tokens, 0 = unlimited"}},
                       "[B, T, H, d]",
                       GradOut::Required,
                       [](const Inputs&, const Attrs& a) {
                           if (a.i("window") < 0) throw ConfigError("attribute 'window' is " + std::to_string(a.i("window")) + ", expected >= 0");
                       },
                       [](const Inputs& in, const Attrs& a) {
                           AttentionSpan span;
                           span.causal = a.i("causal") != 0;
                           span.window = a.i("window");
                           return ops::local_attention(in.at("q"), in.at("k"), in.at("v"), span);
                       }});
        ops.push_back({"select_chunks", "top-K visible chunks per token (not differentiable)",
                       {{"qr", Kind::Float, false, "[B, T, Hr, dr]"}, {"landmarks", Kind::Float, false, "[B, C, Hr, dr]"}},
                       {{"chunk_size", AttrType::Int, "", "S, tokens per chunk (required)"},
                        {"topk", AttrType::Int, "", "K (required)"}},
                       "i32 [B, T, Hr, K], most recent first, -1 padding",
                       GradOut::None,
                       [](const Inputs&, const Attrs& a) {
                           if (a.i("chunk_size") < 1) throw ConfigError("attribute 'chunk_size' must be >= 1");
                           if (a.i("topk") < 1) throw ConfigError("attribute 'topk' must be >= 1");
                       },
                       [](const Inputs& in, const Attrs& a) {
                           return ops::select_chunks(in.at("qr"), in.at("landmarks"), a.i("chunk_size"), a.i("topk"));
                       }});
        ops.push_back({"chunk_weights", "weights over the selected chunks",
                       {{"qr", Kind::Grad, false, "[B, T, Hr, dr]"},
                        {"landmarks", Kind::Grad, false, "[B, C, Hr, dr]"},
                        {"indices", Kind::Int, false, "[B, T, Hr, K], -1 or in [0, C)"}},
                       {{"weights", AttrType::String, "softmax", "\"softmax\" or \"stickbreak\""}},
                       "[B, T, Hr, K]",
                       GradOut::Required,
                       [](const Inputs& in, const Attrs& a) {
                           const std::string& w = a.s("weights");
                           if (w != "softmax" && w != "stickbreak")
                               throw ConfigError("attribute 'weights' is \"" + w + "\", expected \"softmax\" or \"stickbreak\"");
                           const Tensor& l = in.at("landmarks");
                           if (l.ndim() == 4) check_range(in.at("indices"), "indices", 0, l.size(1), true);
                       },
                       [](const Inputs& in, const Attrs& a) {
                           return ops::chunk_weights(in.at("qr"), in.at("landmarks"), in.at("indices"),
                                                     a.s("weights") == "stickbreak" ? WeightKind::StickBreak : WeightKind::Softmax);
                       }});
        ops.push_back({"hsa", "hierarchical sparse attention over the selected chunks",
                       {{"q", Kind::Grad, false, "[B, T, H, d]"},
                        {"kmem", Kind::Grad, false, "[B, Tm, Hk, d], chunk c at rows [c*S, c*S+S)"},
                        {"vmem", Kind::Grad, false, "[B, Tm, Hk, d]"},
                        {"indices", Kind::Int, false, "[B, T, Hr, K], Hk % Hr == 0, -1 or in [0, Tm/S)"},
                        {"weights", Kind::Grad, false, "[B, T, Hr, K]"}},
                       {{"chunk_size", AttrType::Int, "", "S (required)"}},
                       "[B, T, H, d]",
                       GradOut::Required,
                       [](const Inputs& in, const Attrs& a) {
                           const int64_t S = a.i("chunk_size");
                           if (S < 1) throw ConfigError("attribute 'chunk_size' must be >= 1");
                           const Tensor& kmem = in.at("kmem");
                           if (kmem.ndim() == 4) check_range(in.at("indices"), "indices", 0, kmem.size(1) / S, true);
                       },
                       [](const Inputs& in, const Attrs& a) {
                           return ops::hsa_attention(in.at("q"), in.at("kmem"), in.at("vmem"), in.at("indices"),
                                                     in.at("weights"), a.i("chunk_size"));
                       }});
        ops.push_back({"cross_entropy", "mean token cross-entropy (masked)",
                       {{"logits", Kind::Grad, false, "[N, V]"},
                        {"targets", Kind::Int, false, "[N], negative = ignored"},
                        {"mask", Kind::Float, true, "[N] (absent: all ones)"}},
                       {},
                       "[] (scalar)",
                       GradOut::Optional,
                       [](const Inputs& in, const Attrs&) {
                           const Tensor& logits = in.at("logits");
                           if (logits.ndim() == 2) check_range(in.at("targets"), "targets", 0, logits.size(1), false, true);
                       },
                       [](const Inputs& in, const Attrs&) {
                           return ops::cross_entropy(in.at("logits"), in.at("targets"), optional_input(in, "mask"));
                       }});
        ops.push_back({"linear_cross_entropy", "the LM head and its loss as one op: cross_entropy(x . op(weight))",
                       {{"x", Kind::Grad, false, "[N, D]"},
                        {"weight", Kind::Grad, false, "[D, V] ([V, D] when transpose_weight)"},
                        {"targets", Kind::Int, false, "[N], negative = ignored"},
                        {"mask", Kind::Float, true, "[N] (absent: all ones)"}},
                       {{"transpose_weight", AttrType::Bool, "0", "0 or 1 (1: a tied embedding [V, D])"}},
                       "[] (scalar)",
                       GradOut::Optional,
                       [](const Inputs& in, const Attrs& a) {
                           const Tensor& w = in.at("weight");
                           if (w.ndim() == 2)
                               check_range(in.at("targets"), "targets", 0, w.size(a.i("transpose_weight") ? 0 : 1), false,
                                           true);
                       },
                       [](const Inputs& in, const Attrs& a) {
                           return ops::linear_cross_entropy(in.at("x"), in.at("weight"), a.i("transpose_weight") != 0,
                                                            in.at("targets"), optional_input(in, "mask"));
                       }});
        return ops;
    }();
    return table;
}

std::string op_names() {
    std::string names;
    for (const auto& op : op_table()) names += (names.empty() ? "" : ", ") + op.name;
    return names;
}

Attrs read_attributes(const OpDef& op, const Hdf5File& file) {
    Attrs attrs;
    for (const auto& spec : op.attrs) {
        const bool present = file.has_attribute("/", spec.name);
        if (!present && spec.default_value.empty())
            throw ConfigError(file.filename() + ": missing attribute '" + spec.name + "' (" + spec.doc + ")");
        switch (spec.type) {
            case AttrType::Int:
            case AttrType::Bool: {
                int64_t v = present ? file.read_int_attribute("/", spec.name) : std::stoll(spec.default_value);
                if (spec.type == AttrType::Bool && v != 0 && v != 1)
                    throw ConfigError(file.filename() + ": attribute '" + spec.name + "' is " + std::to_string(v) +
                                      ", expected 0 or 1");
                attrs.ints[spec.name] = v;
                break;
            }
            case AttrType::Float:
                attrs.floats[spec.name] = present ? file.read_float_attribute("/", spec.name) : std::stod(spec.default_value);
                break;
            case AttrType::String:
                attrs.strings[spec.name] = present ? file.read_string_attribute("/", spec.name) : spec.default_value;
                break;
        }
    }
    return attrs;
}

// Reads one input dataset with the dtype its kind needs.
Tensor read_input(const Hdf5File& file, const std::string& name, Kind kind) {
    Tensor t = file.read_tensor(name);
    const std::string where = file.filename() + ": dataset '" + name + "'";
    if (kind == Kind::Int) {
        if (t.dtype() == DType::F32)
            throw ConfigError(where + " holds floating-point values, expected integers (i32; i8..i64, u8..u32 are converted)");
        if (t.dtype() == DType::I64) {
            const int64_t* v = t.data<int64_t>();
            for (int64_t i = 0; i < t.numel(); ++i)
                if (v[i] < std::numeric_limits<int32_t>::min() || v[i] > std::numeric_limits<int32_t>::max())
                    throw ConfigError(where + ": value " + std::to_string(v[i]) + " at element " + std::to_string(i) +
                                      " does not fit i32");
            t = t.to(DType::I32);
        }
    } else if (t.dtype() != DType::F32) {
        throw ConfigError(where + " holds " + dtype_name(t.dtype()) + " integers, expected floating point (f32 or f64)");
    }
    return t;
}

const char* kOpHelpHeader = R"(usage: hsa op NAME --inputs IN.h5 --out OUT.h5 [--device cpu|cuda]

Runs one op of core/ops.h forward and backward on inputs read from an HDF5 file, for
checking the framework against an outside reference (e.g. PyTorch through h5py).
IN.h5 holds one dataset per input (f32/f64 for floats, integer types for indices) and
"grad_out", the upstream gradient (the output's shape); attributes on the root group set
the op's parameters. The backward is that of sum(out * grad_out). OUT.h5 receives
"out" and "grad/<input>" for every differentiable input (float inputs marked *), and the
attributes "op" and "device". Datasets in IN.h5 that are not inputs of the op are an
error (groups are ignored). Shapes in detail: docs/OPS.md.

options:
  --inputs FILE   input HDF5 file
  --out FILE      output HDF5 file (created or overwritten)
  --device D      cpu (default) or cuda (inputs are moved to the GPU, results back)
  -h, --help      this text

ops (inputs; attributes = default):
)";

}  // namespace

const std::string& op_help() {
    static const std::string help = [] {
        std::ostringstream s;
        s << kOpHelpHeader;
        for (const auto& op : op_table()) {
            s << "  " << op.name << ": " << op.summary << "\n      inputs:";
            for (const auto& in : op.inputs)
                s << " " << in.name << (in.kind == Kind::Grad ? "*" : "") << (in.optional ? " (optional)" : "") << ",";
            if (op.grad_out == GradOut::Required) s << " grad_out";
            else if (op.grad_out == GradOut::Optional) s << " grad_out (optional, default 1)";
            else s << " no grad_out";
            s << "\n";
            if (!op.attrs.empty()) {
                s << "      attributes:";
                for (size_t i = 0; i < op.attrs.size(); ++i) {
                    const auto& a = op.attrs[i];
                    s << (i ? ", " : " ") << a.name << (a.default_value.empty() ? " (required)" : " = " + a.default_value);
                }
                s << "\n";
            }
            s << "      out: " << op.out_shape << "\n";
        }
        s << "\nexit codes: 0 success, 1 runtime failure, 2 bad arguments or input\n";
        return s.str();
    }();
    return help;
}

int run_op(const std::vector<std::string>& args, std::ostream& out) {
    std::string name, inputs_path, out_path, device_name_arg = "cpu";
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&](const char* option) -> std::string {
            if (i + 1 >= args.size()) throw ConfigError(std::string("op: ") + option + " needs a value");
            return args[++i];
        };
        if (a == "-h" || a == "--help") {
            out << op_help();
            return 0;
        } else if (a == "--inputs") {
            inputs_path = value("--inputs");
        } else if (a == "--out") {
            out_path = value("--out");
        } else if (a == "--device") {
            device_name_arg = value("--device");
        } else if (!a.empty() && a[0] == '-') {
            throw ConfigError("op: unknown option '" + a + "' (see hsa op --help)");
        } else if (name.empty()) {
            name = a;
        } else {
            throw ConfigError("op: unexpected argument '" + a + "' (one op name, see hsa op --help)");
        }
    }
    if (name.empty()) throw ConfigError("op: missing the op name (ops: " + op_names() + ")");
    const OpDef* op = nullptr;
    for (const auto& candidate : op_table())
        if (candidate.name == name) op = &candidate;
    if (!op) throw ConfigError("op: unknown op '" + name + "' (ops: " + op_names() + ")");
    const std::string prefix = "op " + name + ": ";
    if (inputs_path.empty()) throw ConfigError(prefix + "--inputs FILE.h5 is required");
    if (out_path.empty()) throw ConfigError(prefix + "--out FILE.h5 is required");
    if (device_name_arg != "cpu" && device_name_arg != "cuda")
        throw ConfigError(prefix + "--device must be cpu or cuda, got '" + device_name_arg + "'");
    const Device device = device_name_arg == "cuda" ? Device::CUDA : Device::CPU;
    if (device == Device::CUDA && !cuda_available())
        throw ConfigError(prefix + "--device cuda asked for, but there is no GPU (none visible, or a build without CUDA)");

    // ---- read and check the inputs: every failure here is bad input (exit 2) ----
    Inputs host;
    Attrs attrs;
    Tensor grad_out;
    try {
        Hdf5File file(inputs_path, Hdf5Mode::Read);
        auto known = [&](const std::string& dataset) {
            if (dataset == "grad_out") return op->grad_out != GradOut::None;
            for (const auto& in : op->inputs)
                if (in.name == dataset) return true;
            return false;
        };
        for (const auto& member : file.list("/")) {
            if (file.is_dataset(member) && !known(member)) {
                std::string expected;
                for (const auto& in : op->inputs) expected += (expected.empty() ? "" : ", ") + in.name;
                if (op->grad_out != GradOut::None) expected += ", grad_out";
                throw ConfigError(inputs_path + ": dataset '" + member + "' is not an input of " + name + " (inputs: " +
                                  expected + ")");
            }
        }
        for (const auto& in : op->inputs) {
            if (!file.has(in.name)) {
                if (in.optional) continue;
                throw ConfigError(inputs_path + ": no dataset '" + in.name + "' (" + name + " needs " + in.name + " " +
                                  in.shape + ")");
            }
            host[in.name] = read_input(file, in.name, in.kind);
        }
        if (op->grad_out == GradOut::Required && !file.has("grad_out"))
            throw ConfigError(inputs_path + ": no dataset 'grad_out' (the upstream gradient, shaped like " + name +
                              "'s output " + op->out_shape + ")");
        if (op->grad_out != GradOut::None && file.has("grad_out")) grad_out = read_input(file, "grad_out", Kind::Float);
        attrs = read_attributes(*op, file);
        if (op->check) op->check(host, attrs);
    } catch (const Error& e) {  // ConfigError included
        throw ConfigError(prefix + e.what());
    }

    // ---- forward: shape errors thrown by the op are bad input too ----
    Inputs inputs;
    for (const auto& in : op->inputs) {
        auto it = host.find(in.name);
        if (it == host.end()) continue;
        Tensor t = device == Device::CPU ? it->second : it->second.to(device);
        if (in.kind == Kind::Grad) t.set_requires_grad(true);
        inputs[in.name] = t;
    }
    Tensor result;
    try {
        result = op->forward(inputs, attrs);
    } catch (const Error& e) {
        Tape::current().clear();
        throw ConfigError(prefix + e.what());
    }

    // ---- backward of sum(out * grad_out) ----
    std::vector<std::string> grad_names;
    if (op->grad_out != GradOut::None) {
        if (!grad_out.defined()) grad_out = Tensor::full(result.shape(), 1.0f);
        if (grad_out.shape() != result.shape()) {
            if (result.ndim() == 0 && grad_out.numel() == 1) {
                grad_out = grad_out.view({});
            } else {
                Tape::current().clear();
                throw ConfigError(prefix + inputs_path + ": dataset 'grad_out' has shape " + shape_string(grad_out.shape()) +
                                  ", expected the output's shape " + shape_string(result.shape()));
            }
        }
        Tensor loss = ops::sum(ops::mul(result, grad_out.to(device)));
        backward(loss);
        for (const auto& in : op->inputs)
            if (in.kind == Kind::Grad && inputs.count(in.name)) grad_names.push_back(in.name);
    }

    // ---- write the results ----
    Hdf5File file;
    try {
        file = Hdf5File(out_path, Hdf5Mode::Create);
    } catch (const Error& e) {
        throw ConfigError(prefix + e.what());
    }
    file.write_tensor("out", result);
    for (const auto& g : grad_names) {
        Tensor grad = inputs.at(g).grad();
        if (!grad.defined()) grad = Tensor::zeros(inputs.at(g).shape());
        file.write_tensor("grad/" + g, grad);
    }
    file.write_string_attribute("/", "op", name);
    file.write_string_attribute("/", "device", device_name(device));
    file.close();

    out << "op " << name << " on " << device_name(device) << ": out " << shape_string(result.shape()) << " "
        << dtype_name(result.dtype());
    if (!grad_names.empty()) {
        out << ", grads:";
        for (const auto& g : grad_names) out << " " << g;
    }
    out << " -> " << out_path << "\n";
    return 0;
}

}  // namespace hsa
