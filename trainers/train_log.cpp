#include "trainers/train_log.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <sstream>

#include "core/cuda_allocator.h"

namespace hsa {

void fsync_path(const std::string& path, bool is_directory) {
    const int fd = ::open(path.c_str(), is_directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
    if (fd < 0) HSA_FAIL("cannot open '" << path << "' to sync it to disk: " << std::strerror(errno));
    const int status = ::fsync(fd);
    const int error = errno;
    ::close(fd);
    HSA_CHECK(status == 0, "cannot sync '" << path << "' to disk: " << std::strerror(error));
}

void write_file_atomically(const std::string& path, const std::string& text) {
    const std::string temporary = path + ".tmp";
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        HSA_CHECK(out, "cannot write '" << temporary << "': " << std::strerror(errno));
        out << text;
        out.flush();
        HSA_CHECK(out, "cannot write '" << temporary << "' (disk full?)");
    }
    fsync_path(temporary, false);
    std::error_code ec;
    std::filesystem::rename(temporary, path, ec);
    HSA_CHECK(!ec, "cannot rename '" << temporary << "' to '" << path << "': " << ec.message());
}

std::vector<Json> read_train_log(const std::string& path) {
    std::vector<Json> records;
    std::ifstream in(path, std::ios::binary);
    if (!in) return records;
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    // A line without its newline is the one a killed process was writing.
    in.clear();
    in.seekg(0, std::ios::end);
    const bool ends_with_newline = [&] {
        if (in.tellg() <= 0) return true;
        in.seekg(-1, std::ios::end);
        return in.get() == '\n';
    }();
    for (size_t i = 0; i < lines.size(); ++i) {
        if (lines[i].empty()) continue;
        const bool torn = i + 1 == lines.size() && !ends_with_newline;
        try {
            records.push_back(Json::parse(lines[i], path + " line " + std::to_string(i + 1)));
        } catch (const Error&) {
            if (torn) break;
            throw;
        }
    }
    return records;
}

TrainLog::TrainLog(const std::string& path, int64_t keep_through_step) : path_(path) {
    std::string kept;
    if (keep_through_step > 0) {
        for (const Json& record : read_train_log(path)) {
            if (record.is_object() && record.contains("step") && record.at("step").as_number() <= keep_through_step)
                kept += record.dump() + "\n";
        }
    }
    write_file_atomically(path, kept);
    out_.open(path, std::ios::binary | std::ios::app);
    HSA_CHECK(out_, "cannot open '" << path << "' for appending: " << std::strerror(errno));
}

void TrainLog::append(const Json& record) {
    out_ << record.dump() << "\n";
    out_.flush();
    HSA_CHECK(out_, "cannot append to '" << path_ << "' (disk full?)");
}

int64_t peak_memory_bytes(Device device) {
    if (device == Device::CUDA) return static_cast<int64_t>(cuda_allocator_stats().peak_bytes_in_use);
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports kilobytes
}

std::string format_duration(double seconds) {
    std::ostringstream out;
    const int64_t s = static_cast<int64_t>(seconds + 0.5);
    if (s >= 3600) out << s / 3600 << "h" << std::setw(2) << std::setfill('0') << (s % 3600) / 60 << "m";
    else if (s >= 60) out << s / 60 << "m" << std::setw(2) << std::setfill('0') << s % 60 << "s";
    else out << s << "s";
    return out.str();
}

}  // namespace hsa
