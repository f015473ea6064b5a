#include "trainers/tasks/task_shard.h"

#include <hdf5.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/hdf5_handle.h"
#include "core/hdf5_io.h"
#include "core/json.h"

namespace hsa {

namespace {

const char* kFormat = "hsa-task-shard-1";

Tensor i64_tensor(const std::vector<int64_t>& values) {
    Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, DType::I64);
    if (!values.empty()) std::memcpy(t.data<int64_t>(), values.data(), values.size() * sizeof(int64_t));
    return t;
}

std::vector<int64_t> read_i64(const Hdf5File& file, const std::string& name, size_t expected) {
    const Tensor t = file.read_tensor(name);
    if (t.ndim() != 1 || static_cast<size_t>(t.numel()) != expected)
        throw Error(file.filename() + ": /" + name + " has shape " + shape_string(t.shape()) + ", expected [" + std::to_string(expected) + "]");
    std::vector<int64_t> out(expected);
    if (t.dtype() == DType::I64) {
        std::memcpy(out.data(), t.data<int64_t>(), expected * sizeof(int64_t));
    } else {
        for (size_t i = 0; i < expected; ++i) out[i] = t.data<int32_t>()[i];
    }
    return out;
}

using hdf5::Handle;

}  // namespace

void write_string_dataset(const std::string& path, const std::string& dataset, const std::vector<std::string>& values) {
    hdf5::silence_errors();
    const std::string where = path + ": /" + dataset;
    Handle file{H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose};
    if (file.get() < 0) throw Error(path + ": cannot open for writing strings");
    if (H5Lexists(file.get(), dataset.c_str(), H5P_DEFAULT) > 0 && H5Ldelete(file.get(), dataset.c_str(), H5P_DEFAULT) < 0)
        throw Error(where + ": cannot replace the existing dataset");
    Handle type{H5Tcopy(H5T_C_S1), H5Tclose};
    if (type.get() < 0 || H5Tset_size(type.get(), H5T_VARIABLE) < 0 || H5Tset_cset(type.get(), H5T_CSET_UTF8) < 0)
        throw Error(where + ": cannot make a string type");
    const hsize_t count = values.size();
    Handle space{H5Screate_simple(1, &count, nullptr), H5Sclose};
    Handle data{H5Dcreate2(file.get(), dataset.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose};
    if (data.get() < 0) throw Error(where + ": cannot create the dataset");
    std::vector<const char*> pointers;
    pointers.reserve(values.size());
    for (const std::string& v : values) pointers.push_back(v.c_str());
    if (!values.empty() && H5Dwrite(data.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, pointers.data()) < 0)
        throw Error(where + ": cannot write " + std::to_string(values.size()) + " strings");
}

std::vector<std::string> read_string_dataset(const std::string& path, const std::string& dataset) {
    hdf5::silence_errors();
    const std::string where = path + ": /" + dataset;
    Handle file{H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose};
    if (file.get() < 0) throw Error(path + ": cannot open for reading");
    if (H5Lexists(file.get(), dataset.c_str(), H5P_DEFAULT) <= 0) throw Error(where + " is missing");
    Handle data{H5Dopen2(file.get(), dataset.c_str(), H5P_DEFAULT), H5Dclose};
    if (data.get() < 0) throw Error(where + ": cannot open the dataset");
    Handle stored{H5Dget_type(data.get()), H5Tclose};
    if (H5Tget_class(stored.get()) != H5T_STRING || H5Tis_variable_str(stored.get()) <= 0)
        throw Error(where + " is not a variable-length string dataset");
    Handle space{H5Dget_space(data.get()), H5Sclose};
    if (H5Sget_simple_extent_ndims(space.get()) != 1) throw Error(where + " is not 1-D");
    hsize_t count = 0;
    H5Sget_simple_extent_dims(space.get(), &count, nullptr);
    Handle type{H5Tcopy(H5T_C_S1), H5Tclose};
    H5Tset_size(type.get(), H5T_VARIABLE);
    H5Tset_cset(type.get(), H5T_CSET_UTF8);
    std::vector<char*> pointers(count, nullptr);
    if (count > 0 && H5Dread(data.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, pointers.data()) < 0)
        throw Error(where + ": cannot read " + std::to_string(count) + " strings");
    std::vector<std::string> out;
    out.reserve(count);
    for (char* p : pointers) out.emplace_back(p ? p : "");
    if (count > 0) {
#if H5_VERSION_GE(1, 12, 0)
        H5Treclaim(type.get(), space.get(), H5P_DEFAULT, pointers.data());
#else
        H5Dvlen_reclaim(type.get(), space.get(), H5P_DEFAULT, pointers.data());
#endif
    }
    return out;
}

TaskShardWriter::TaskShardWriter(const std::string& path, const Tokenizer& tok, int64_t seed)
    : path_(path), vocab_size_(tok.vocab_size()), bos_(tok.bos_id()), eos_(tok.eos_id()), seed_(seed), tokenizer_(tok.name()),
      wide_(tok.vocab_size() > 65536) {
    hdf5::silence_errors();
    file_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file_ < 0) throw Error(path + ": cannot create the task shard");
    // 1-D datasets that grow: chunks of 1M elements, no limit.
    auto growing = [&](const char* name, hid_t type) {
        const hsize_t zero = 0, unlimited = H5S_UNLIMITED, chunk = 1 << 20;
        Handle space{H5Screate_simple(1, &zero, &unlimited), H5Sclose};
        Handle props{H5Pcreate(H5P_DATASET_CREATE), H5Pclose};
        H5Pset_chunk(props.get(), 1, &chunk);
        const hid_t set = H5Dcreate2(file_, name, type, space.get(), H5P_DEFAULT, props.get(), H5P_DEFAULT);
        if (set < 0) throw Error(path_ + ": cannot create /" + name);
        return set;
    };
    try {
        tokens_set_ = growing("tokens", wide_ ? H5T_STD_U32LE : H5T_STD_U16LE);
        mask_set_ = growing("loss_mask", H5T_STD_U8LE);
    } catch (...) {
        discard();
        throw;
    }
}

void TaskShardWriter::discard() {
    const bool unfinished = file_ >= 0;
    if (tokens_set_ >= 0) H5Dclose(tokens_set_);
    if (mask_set_ >= 0) H5Dclose(mask_set_);
    if (file_ >= 0) H5Fclose(file_);
    tokens_set_ = mask_set_ = file_ = -1;
    if (unfinished) std::remove(path_.c_str());
}

TaskShardWriter::~TaskShardWriter() { discard(); }

void TaskShardWriter::append(const TaskExample& ex) {
    if (file_ < 0) throw Error(path_ + ": append after close");
    const size_t n = ex.tokens.size();
    if (ex.loss_mask.size() != n)
        throw Error(path_ + ": example " + std::to_string(offsets_.size()) + " has " + std::to_string(ex.loss_mask.size()) +
                    " loss-mask entries for " + std::to_string(n) + " tokens");
    // Narrow the ids to the stored width, range-checked like the HDF5 layer's writers.
    std::vector<uint16_t> narrow;
    std::vector<uint32_t> wide;
    (wide_ ? wide.resize(n) : narrow.resize(n));
    for (size_t i = 0; i < n; ++i) {
        const int32_t id = ex.tokens[i];
        if (id < 0 || id >= vocab_size_)
            throw Error(path_ + ": example " + std::to_string(offsets_.size()) + " token " + std::to_string(i) + " is id " +
                        std::to_string(id) + ", outside the vocabulary [0, " + std::to_string(vocab_size_) + ")");
        if (wide_) wide[i] = static_cast<uint32_t>(id);
        else narrow[i] = static_cast<uint16_t>(id);
    }
    auto append_to = [&](hid_t set, hid_t memory_type, const void* data, const char* name) {
        const hsize_t start = static_cast<hsize_t>(total_), count = n, size = start + count;
        if (H5Dset_extent(set, &size) < 0) throw Error(path_ + ": cannot grow /" + name);
        Handle file_space{H5Dget_space(set), H5Sclose};
        Handle memory_space{H5Screate_simple(1, &count, nullptr), H5Sclose};
        if (H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr) < 0 ||
            (n > 0 && H5Dwrite(set, memory_type, memory_space.get(), file_space.get(), H5P_DEFAULT, data) < 0))
            throw Error(path_ + ": cannot append " + std::to_string(n) + " values to /" + name);
    };
    if (wide_) append_to(tokens_set_, H5T_NATIVE_UINT32, wide.data(), "tokens");
    else append_to(tokens_set_, H5T_NATIVE_UINT16, narrow.data(), "tokens");
    append_to(mask_set_, H5T_NATIVE_UINT8, ex.loss_mask.data(), "loss_mask");

    offsets_.push_back(total_);
    total_ += static_cast<int64_t>(n);
    prompt_lengths_.push_back(ex.prompt_length);
    lengths_.push_back(static_cast<int64_t>(n));
    target_lengths_.push_back(ex.target_length);
    depths_.push_back(ex.depth);
    Json list = Json::array();
    for (const std::string& a : ex.answers) list.push_back(a);
    answers_.push_back(list.dump());
    questions_.push_back(ex.question);
    tasks_.push_back(ex.task);
    if (std::find(task_order_.begin(), task_order_.end(), ex.task) == task_order_.end()) task_order_.push_back(ex.task);
}

void TaskShardWriter::close() {
    if (file_ < 0) throw Error(path_ + ": closed twice");
    H5Dclose(tokens_set_);
    H5Dclose(mask_set_);
    H5Fclose(file_);
    tokens_set_ = mask_set_ = file_ = -1;
    try {
        Hdf5File file(path_, Hdf5Mode::ReadWrite);
        file.write_tensor("offsets", i64_tensor(offsets_));
        file.write_tensor("prompt_lengths", i64_tensor(prompt_lengths_));
        file.write_tensor("lengths", i64_tensor(lengths_));
        file.write_tensor("target_lengths", i64_tensor(target_lengths_));
        Tensor depths = Tensor::empty({static_cast<int64_t>(depths_.size())}, DType::F32);
        for (size_t i = 0; i < depths_.size(); ++i) depths.data<float>()[i] = static_cast<float>(depths_[i]);
        file.write_tensor("depths", depths, Hdf5Type::F64);
        std::string task_list;
        for (const std::string& t : task_order_) task_list += (task_list.empty() ? "" : ",") + t;
        file.write_int_attribute("/", "vocab_size", vocab_size_);
        file.write_string_attribute("/", "tokenizer", tokenizer_);
        file.write_int_attribute("/", "bos", bos_);
        file.write_int_attribute("/", "eos", eos_);
        file.write_string_attribute("/", "task", task_list);
        file.write_int_attribute("/", "seed", seed_);
        file.write_string_attribute("/", "format", kFormat);
        file.close();
        write_string_dataset(path_, "answers", answers_);
        write_string_dataset(path_, "questions", questions_);
        write_string_dataset(path_, "tasks", tasks_);
    } catch (...) {
        std::remove(path_.c_str());
        throw;
    }
}

void write_task_shard(const std::string& path, const std::vector<TaskExample>& examples, const Tokenizer& tok,
                      int64_t seed) {
    TaskShardWriter writer(path, tok, seed);
    for (const TaskExample& ex : examples) writer.append(ex);
    writer.close();
}

TaskShard read_task_shard(const std::string& path) {
    TaskShard shard;
    std::vector<int64_t> offsets, prompt_lengths, lengths, target_lengths;
    Tensor tokens, mask, depths;
    {
        Hdf5File file(path, Hdf5Mode::Read);
        if (!file.has_attribute("/", "format") || file.read_string_attribute("/", "format") != kFormat)
            throw Error(path + ": not a task shard (no format attribute \"" + kFormat + "\")");
        shard.tokenizer = file.read_string_attribute("/", "tokenizer");
        shard.vocab_size = file.read_int_attribute("/", "vocab_size");
        shard.bos = file.read_int_attribute("/", "bos");
        shard.eos = file.read_int_attribute("/", "eos");
        shard.task = file.read_string_attribute("/", "task");
        shard.seed = file.read_int_attribute("/", "seed");
        const Shape offsets_shape = file.dataset_shape("offsets");
        if (offsets_shape.size() != 1) throw Error(path + ": /offsets is not 1-D");
        const size_t n = static_cast<size_t>(offsets_shape[0]);
        offsets = read_i64(file, "offsets", n);
        prompt_lengths = read_i64(file, "prompt_lengths", n);
        lengths = read_i64(file, "lengths", n);
        target_lengths = read_i64(file, "target_lengths", n);
        tokens = file.read_tensor("tokens");
        mask = file.read_tensor("loss_mask");
        depths = file.read_tensor("depths");
        if (tokens.ndim() != 1 || mask.ndim() != 1 || mask.numel() != tokens.numel())
            throw Error(path + ": /tokens and /loss_mask must be 1-D and of one length");
        if (depths.numel() != static_cast<int64_t>(n)) throw Error(path + ": /depths does not have one entry per example");
    }
    const std::vector<std::string> answers = read_string_dataset(path, "answers");
    const std::vector<std::string> questions = read_string_dataset(path, "questions");
    const std::vector<std::string> tasks = read_string_dataset(path, "tasks");
    const size_t n = offsets.size();
    if (answers.size() != n || questions.size() != n || tasks.size() != n)
        throw Error(path + ": /answers, /questions and /tasks must have one entry per example (" + std::to_string(n) + ")");
    const int64_t total = tokens.numel();
    for (size_t i = 0; i < n; ++i) {
        const int64_t begin = offsets[i], end = i + 1 < n ? offsets[i + 1] : total;
        if (begin < 0 || end > total || end - begin != lengths[i] || prompt_lengths[i] < 0 || prompt_lengths[i] > lengths[i])
            throw Error(path + ": example " + std::to_string(i) + " has inconsistent offsets/lengths (" + std::to_string(begin) +
                        ".." + std::to_string(end) + ", length " + std::to_string(lengths[i]) + ")");
        TaskExample ex;
        ex.task = tasks[i];
        ex.tokens.assign(tokens.data<int32_t>() + begin, tokens.data<int32_t>() + end);
        ex.loss_mask.resize(ex.tokens.size());
        for (int64_t k = begin; k < end; ++k) ex.loss_mask[static_cast<size_t>(k - begin)] = static_cast<uint8_t>(mask.data<int32_t>()[k]);
        ex.prompt_length = prompt_lengths[i];
        ex.target_length = target_lengths[i];
        ex.depth = depths.data<float>()[i];
        ex.question = questions[i];
        const Json list = Json::parse(answers[i], path + " /answers[" + std::to_string(i) + "]");
        if (!list.is_array()) throw Error(path + ": /answers[" + std::to_string(i) + "] is not a JSON list");
        for (const Json& a : list.items()) {
            if (!a.is_string()) throw Error(path + ": /answers[" + std::to_string(i) + "] holds a non-string");
            ex.answers.push_back(a.as_string());
        }
        shard.examples.push_back(std::move(ex));
    }
    return shard;
}

}  // namespace hsa
