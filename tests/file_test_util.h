// Helpers of the data tests (test_token_shards, test_data_sources, test_bpe_tokenizer,
// test_tokenizer, test_tasks, test_cli, test_hdf5_op, test_trainer): a fresh folder per
// test, the check that a call fails with one ConfigError line, and the skip for machines
// without the installed prose corpus.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "core/model/config.h"
#include "trainers/tasks/corpus.h"

// Skips the test, naming the Debian package to install, where the prose corpus
// (trainers/tasks/corpus.h) is not installed: e.g. the GPU machine; CI installs it.
#define HSA_SKIP_WITHOUT_CORPUS()                                              \
    do {                                                                       \
        const std::string hsa_corpus_reason = ::hsa::corpus_missing_reason();  \
        if (!hsa_corpus_reason.empty()) GTEST_SKIP() << hsa_corpus_reason;     \
    } while (0)

namespace hsa::test {

// A fresh folder per test (named after the prefix, the process and the test), removed
// afterwards.
class TempFolder {
public:
    explicit TempFolder(const std::string& prefix) {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        path_ = std::filesystem::temp_directory_path() /
                (prefix + "_" + std::to_string(getpid()) + "_" + info->test_suite_name() + "_" + info->name());
        std::filesystem::remove_all(path_);
        std::filesystem::create_directories(path_);
    }
    ~TempFolder() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempFolder(const TempFolder&) = delete;
    TempFolder& operator=(const TempFolder&) = delete;
    std::string operator/(const std::string& name) const { return (path_ / name).string(); }
    // The folder itself.
    std::string path() const { return path_.string(); }
    // The names of the files in the folder, sorted.
    std::vector<std::string> files() const {
        std::vector<std::string> names;
        for (const auto& e : std::filesystem::directory_iterator(path_)) names.push_back(e.path().filename().string());
        std::sort(names.begin(), names.end());
        return names;
    }

private:
    std::filesystem::path path_;
};

// f() must throw a ConfigError whose message is one non-empty line naming each of
// `mentions`; no error, or another kind of exception, fails the test.
template <class F>
void expect_one_line_error(F&& f, const std::vector<std::string>& mentions) {
    try {
        f();
        ADD_FAILURE() << "no error";
    } catch (const ConfigError& e) {
        const std::string m = e.what();
        EXPECT_EQ(m.find('\n'), std::string::npos) << "one line: " << m;
        EXPECT_FALSE(m.empty());
        for (const auto& s : mentions) EXPECT_NE(m.find(s), std::string::npos) << "expected '" << s << "' in: " << m;
    } catch (const std::exception& e) {
        ADD_FAILURE() << "not a ConfigError: " << e.what();
    }
}

}  // namespace hsa::test
