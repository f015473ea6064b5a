#include "trainers/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <sstream>

#include "core/hdf5_io.h"
#include "trainers/train_log.h"

namespace hsa {

namespace {

constexpr const char* kFormat = "hsa-checkpoint-1";
constexpr const char* kPrefix = "step-";
constexpr const char* kSuffix = ".h5";
constexpr const char* kTemporarySuffix = ".h5.tmp";

// A 64-bit FNV-1a style hash over 8-byte words (bytes for the tail): fast enough for the
// paper-scale model's 3.4 GB of checkpoint tensors, and any truncation or flipped bit
// changes it. Not cryptographic; it guards against damage, not against tampering.
class Checksum {
public:
    void add(const void* data, size_t bytes) {
        const auto* p = static_cast<const unsigned char*>(data);
        size_t i = 0;
        for (; i + 8 <= bytes; i += 8) {
            uint64_t word;
            std::memcpy(&word, p + i, 8);
            mix(word);
        }
        for (; i < bytes; ++i) mix(p[i]);
        mix(bytes);
    }
    void add(const std::string& text) { add(text.data(), text.size()); }
    void add(const Tensor& host) { add(host.raw_data(), host.nbytes()); }
    std::string hex() const {
        std::ostringstream out;
        out << std::hex << std::setw(16) << std::setfill('0') << hash_;
        return out.str();
    }

private:
    void mix(uint64_t word) {
        hash_ ^= word;
        hash_ *= 0x100000001b3ull;
        hash_ ^= hash_ >> 29;
    }
    uint64_t hash_ = 0xcbf29ce484222325ull;
};

std::string params_path(const std::string& name) { return "/params/" + name; }
std::string moment_path(const std::string& name, const char* which) { return "/optim/" + name + "/" + which; }

bool has_suffix(const std::string& text, const std::string& suffix) {
    return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The step of "step-<digits>.h5", or -1 for any other name.
int64_t step_of_file_name(const std::string& name) {
    const std::string prefix = kPrefix, suffix = kSuffix;
    if (name.size() <= prefix.size() + suffix.size() || name.rfind(prefix, 0) != 0 || !has_suffix(name, suffix)) return -1;
    const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
    return std::stoll(digits);
}

Json parse_attribute_json(const Hdf5File& file, const char* name) {
    return Json::parse(file.read_string_attribute("/", name), file.filename() + " attribute " + name);
}

// Leaf paths ("train.lr") of a configuration, with their values.
void flatten(const Json& value, const std::string& prefix, std::vector<std::pair<std::string, const Json*>>& out) {
    if (value.is_object() && !value.fields().empty()) {
        for (const auto& [key, child] : value.fields()) flatten(child, prefix.empty() ? key : prefix + "." + key, out);
    } else {
        out.emplace_back(prefix, &value);
    }
}

}  // namespace

std::string checkpoint_file_name(int64_t step) {
    std::ostringstream name;
    name << kPrefix << std::setw(8) << std::setfill('0') << step << kSuffix;
    return name.str();
}

namespace {
void write_checkpoint_file(const std::string& temporary, const CheckpointState& state, const ParameterStore& params,
                           AdamW& optimizer) {
    const auto& entries = params.entries();
    const auto& m = optimizer.first_moments();
    const auto& v = optimizer.second_moments();
    HSA_CHECK(m.size() == entries.size() && v.size() == entries.size(),
              "checkpoint: the optimizer holds " << m.size() << " moments for " << entries.size() << " parameters");
    Checksum params_checksum, optimizer_checksum;
    Json order = Json::array();
    {
        Hdf5File file(temporary, Hdf5Mode::Create);
        for (size_t i = 0; i < entries.size(); ++i) {
            const std::string& name = entries[i].name;
            order.push_back(name);
            // Host copies once: written, and hashed exactly as they will be read back.
            Tensor weights = entries[i].tensor.to(Device::CPU).to(DType::F32).contiguous();
            Tensor first = m[i].to(Device::CPU).to(DType::F32).contiguous();
            Tensor second = v[i].to(Device::CPU).to(DType::F32).contiguous();
            file.write_tensor(params_path(name), weights, Hdf5Type::F32);
            file.write_tensor(moment_path(name, "m"), first, Hdf5Type::F32);
            file.write_tensor(moment_path(name, "v"), second, Hdf5Type::F32);
            params_checksum.add(name);
            params_checksum.add(weights);
            optimizer_checksum.add(name);
            optimizer_checksum.add(first);
            optimizer_checksum.add(second);
        }
        file.write_string_attribute("/", "format", kFormat);
        file.write_string_attribute("/", "config", state.config.dump());
        file.write_int_attribute("/", "step", state.step);
        file.write_int_attribute("/", "tokens_seen", state.tokens_seen);
        file.write_int_attribute("/", "optimizer_steps", state.optimizer_steps);
        file.write_int_attribute("/", "skipped_steps", state.skipped_steps);
        file.write_int_attribute("/", "consecutive_bad_steps", state.consecutive_bad_steps);
        file.write_string_attribute("/", "data_state", state.data_state.dump());
        file.write_string_attribute("/", "rng_state", state.rng_state.dump());
        file.write_string_attribute("/", "parameter_order", order.dump());
        file.write_string_attribute("/", "params_checksum", params_checksum.hex());
        file.write_string_attribute("/", "optimizer_checksum", optimizer_checksum.hex());
        file.close();
    }
    fsync_path(temporary, false);
}
}  // namespace

void save_checkpoint(const std::string& path, const CheckpointState& state, const ParameterStore& params,
                     AdamW& optimizer) {
    const std::string temporary = path + ".tmp";
    std::error_code ec;
    try {
        write_checkpoint_file(temporary, state, params, optimizer);
    } catch (...) {
        std::filesystem::remove(temporary, ec);  // a failed save (disk full) leaves no debris
        throw;
    }
    std::filesystem::rename(temporary, path, ec);
    HSA_CHECK(!ec, "checkpoint: cannot rename '" << temporary << "' to '" << path << "': " << ec.message());
    const std::string folder = std::filesystem::path(path).parent_path().string();
    fsync_path(folder.empty() ? "." : folder, true);
}

Checkpoint read_checkpoint(const std::string& path, bool with_optimizer) {
    Checkpoint c;
    c.path = path;
    Hdf5File file(path, Hdf5Mode::Read);
    for (const char* name : {"format", "config", "step", "tokens_seen", "optimizer_steps", "skipped_steps",
                             "consecutive_bad_steps", "data_state", "rng_state", "parameter_order", "params_checksum",
                             "optimizer_checksum"})
        HSA_CHECK(file.has_attribute("/", name), path << ": not a complete hsa checkpoint (no attribute '" << name << "')");
    const std::string format = file.read_string_attribute("/", "format");
    HSA_CHECK(format == kFormat, path << ": checkpoint format '" << format << "', expected '" << kFormat << "'");
    c.state.config = parse_attribute_json(file, "config");
    c.state.step = file.read_int_attribute("/", "step");
    c.state.tokens_seen = file.read_int_attribute("/", "tokens_seen");
    c.state.optimizer_steps = file.read_int_attribute("/", "optimizer_steps");
    c.state.skipped_steps = file.read_int_attribute("/", "skipped_steps");
    c.state.consecutive_bad_steps = file.read_int_attribute("/", "consecutive_bad_steps");
    c.state.data_state = parse_attribute_json(file, "data_state");
    c.state.rng_state = parse_attribute_json(file, "rng_state");
    const Json order = parse_attribute_json(file, "parameter_order");
    HSA_CHECK(order.is_array(), path << ": attribute parameter_order is not a list");

    Checksum params_checksum, optimizer_checksum;
    for (const Json& entry : order.items()) {
        HSA_CHECK(entry.is_string(), path << ": attribute parameter_order holds a non-string");
        const std::string& name = entry.as_string();
        c.parameter_names.push_back(name);
        c.params.push_back(file.read_tensor(params_path(name)));
        params_checksum.add(name);
        params_checksum.add(c.params.back());
        if (with_optimizer) {
            c.first_moments.push_back(file.read_tensor(moment_path(name, "m")));
            c.second_moments.push_back(file.read_tensor(moment_path(name, "v")));
            HSA_CHECK(c.first_moments.back().shape() == c.params.back().shape() &&
                          c.second_moments.back().shape() == c.params.back().shape(),
                      path << ": the optimizer moments of '" << name << "' do not have the parameter's shape "
                           << shape_string(c.params.back().shape()));
            optimizer_checksum.add(name);
            optimizer_checksum.add(c.first_moments.back());
            optimizer_checksum.add(c.second_moments.back());
        }
    }
    HSA_CHECK(params_checksum.hex() == file.read_string_attribute("/", "params_checksum"),
              path << ": the parameters do not match their checksum (the file is damaged)");
    if (with_optimizer)
        HSA_CHECK(optimizer_checksum.hex() == file.read_string_attribute("/", "optimizer_checksum"),
                  path << ": the optimizer state does not match its checksum (the file is damaged)");
    return c;
}

void apply_checkpoint(const Checkpoint& checkpoint, ParameterStore& params, AdamW* optimizer) {
    auto& entries = params.entries();
    HSA_CHECK(checkpoint.parameter_names.size() == entries.size(),
              checkpoint.path << ": holds " << checkpoint.parameter_names.size() << " parameters, the model has "
                              << entries.size());
    for (size_t i = 0; i < entries.size(); ++i) {
        HSA_CHECK(checkpoint.parameter_names[i] == entries[i].name,
                  checkpoint.path << ": parameter " << i << " is '" << checkpoint.parameter_names[i] << "', the model's is '"
                                  << entries[i].name << "'");
        HSA_CHECK(checkpoint.params[i].shape() == entries[i].tensor.shape(),
                  checkpoint.path << ": parameter '" << entries[i].name << "' has shape "
                                  << shape_string(checkpoint.params[i].shape()) << ", the model's is "
                                  << shape_string(entries[i].tensor.shape()));
    }
    if (optimizer) {
        HSA_CHECK(checkpoint.first_moments.size() == entries.size(),
                  checkpoint.path << ": read without the optimizer state, which resuming needs");
        HSA_CHECK(checkpoint.state.optimizer_steps >= 0, checkpoint.path << ": negative optimizer_steps");
    }
    for (size_t i = 0; i < entries.size(); ++i) {
        entries[i].tensor.copy_from(checkpoint.params[i]);
        if (optimizer) {
            optimizer->first_moments()[i].copy_from(checkpoint.first_moments[i]);
            optimizer->second_moments()[i].copy_from(checkpoint.second_moments[i]);
        }
    }
    if (optimizer) optimizer->set_steps_taken(checkpoint.state.optimizer_steps);
}

std::vector<CheckpointFile> list_checkpoints(const std::string& folder) {
    std::vector<CheckpointFile> files;
    std::error_code ec;
    if (!std::filesystem::is_directory(folder, ec)) return files;
    for (const auto& entry : std::filesystem::directory_iterator(folder, ec)) {
        const int64_t step = step_of_file_name(entry.path().filename().string());
        if (step >= 0 && entry.is_regular_file(ec)) files.push_back({step, entry.path().string()});
    }
    std::sort(files.begin(), files.end(), [](const CheckpointFile& a, const CheckpointFile& b) { return a.step < b.step; });
    return files;
}

int remove_checkpoint_temporaries(const std::string& folder) {
    int removed = 0;
    std::error_code ec;
    if (!std::filesystem::is_directory(folder, ec)) return 0;
    std::vector<std::filesystem::path> stale;
    for (const auto& entry : std::filesystem::directory_iterator(folder, ec)) {
        const std::string name = entry.path().filename().string();
        if (name.rfind(kPrefix, 0) == 0 && has_suffix(name, kTemporarySuffix)) stale.push_back(entry.path());
    }
    for (const auto& path : stale) removed += std::filesystem::remove(path, ec) ? 1 : 0;
    return removed;
}

void prune_checkpoints(const std::string& folder, int64_t keep) {
    if (keep <= 0) return;
    std::vector<CheckpointFile> files = list_checkpoints(folder);
    std::error_code ec;
    for (size_t i = 0; i + static_cast<size_t>(keep) < files.size(); ++i) std::filesystem::remove(files[i].path, ec);
}

const std::vector<std::string>& bookkeeping_config_fields() {
    static const std::vector<std::string> fields = {"train.out_dir",   "train.save_every",    "train.keep_checkpoints",
                                                    "train.log_every", "train.eval_every",    "train.eval_batches",
                                                    "train.max_bad_steps"};
    return fields;
}

std::string first_config_difference(const Json& checkpoint_config, const Json& current_config) {
    std::vector<std::pair<std::string, const Json*>> saved, now;
    flatten(checkpoint_config, "", saved);
    flatten(current_config, "", now);
    auto value_of = [](const std::vector<std::pair<std::string, const Json*>>& leaves, const std::string& key) -> const Json* {
        for (const auto& [k, v] : leaves)
            if (k == key) return v;
        return nullptr;
    };
    auto is_bookkeeping = [](const std::string& key) {
        const auto& fields = bookkeeping_config_fields();
        return std::find(fields.begin(), fields.end(), key) != fields.end();
    };
    auto text = [](const Json* v) { return v ? v->dump() : std::string("(absent)"); };
    // Every key of either side; the model's and the optimizer's fields first, as the likeliest
    // intended change and the one that matters most.
    std::vector<std::string> keys;
    for (const auto& [k, v] : now) keys.push_back(k);
    for (const auto& [k, v] : saved)
        if (!value_of(now, k)) keys.push_back(k);
    auto rank = [](const std::string& key) {
        const char* order[] = {"model.", "train.", "task.", "data."};
        for (int i = 0; i < 4; ++i)
            if (key.rfind(order[i], 0) == 0) return i;
        return 4;
    };
    std::stable_sort(keys.begin(), keys.end(), [&](const std::string& a, const std::string& b) { return rank(a) < rank(b); });
    std::string first;
    std::vector<std::string> others;
    for (const std::string& key : keys) {
        if (is_bookkeeping(key)) continue;
        const Json* a = value_of(saved, key);
        const Json* b = value_of(now, key);
        if (text(a) == text(b)) continue;
        if (first.empty()) first = key + ": checkpoint " + text(a) + ", now " + text(b);
        else others.push_back(key);
    }
    if (!others.empty()) {
        first += " (and " + std::to_string(others.size()) + " more: ";
        for (size_t i = 0; i < others.size() && i < 4; ++i) first += (i ? ", " : "") + others[i];
        first += others.size() > 4 ? ", ...)" : ")";
    }
    return first;
}

}  // namespace hsa
