// Runs the real `hsa` binary (HSA_BINARY_PATH) for the command-line tests
// (tests/test_cli.cpp, tests/test_hdf5_op.cpp, tests/test_tokenizer.cpp): a shell command
// with stdin from /dev/null (or a given file) and stdout and stderr captured to files, and
// checks of its one-line errors.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#ifndef HSA_BINARY_PATH
#error "HSA_BINARY_PATH must name the built hsa executable"
#endif

namespace hsa::test {

struct RunResult {
    int code = -1;  // exit code; -1 when the shell failed or the process did not exit normally
    std::string out, err;
};

// `s` in single quotes for the shell.
inline std::string shell_quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

inline std::string read_file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// Runs `<env_prefix>hsa <args...>` (env_prefix, e.g. "OMP_NUM_THREADS=4 ", is put before the
// binary verbatim), stdin read from the file in_path, stdout and stderr going to the files
// out_path and err_path.
inline RunResult run_hsa(const std::vector<std::string>& args, const std::string& out_path,
                         const std::string& err_path, const std::string& env_prefix = "",
                         const std::string& in_path = "/dev/null") {
    std::string command = env_prefix + shell_quote(HSA_BINARY_PATH);
    for (const auto& a : args) command += " " + shell_quote(a);
    command += " <" + shell_quote(in_path) + " >" + shell_quote(out_path) + " 2>" + shell_quote(err_path);
    const int status = std::system(command.c_str());
    RunResult r;
    r.code = status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = read_file_bytes(out_path);
    r.err = read_file_bytes(err_path);
    return r;
}

inline std::string describe(const RunResult& r) {
    return "exit " + std::to_string(r.code) + "\n--- stdout ---\n" + r.out + "--- stderr ---\n" + r.err;
}

// The exit code `code` and exactly one "hsa: error: ..." line on stderr that mentions each
// of `mentions`.
inline void expect_error_line(const RunResult& r, int code, const std::vector<std::string>& mentions) {
    EXPECT_EQ(r.code, code) << describe(r);
    EXPECT_EQ(r.err.rfind("hsa: error: ", 0), 0u) << describe(r);
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "stderr must be exactly one line\n" << describe(r);
    EXPECT_TRUE(!r.err.empty() && r.err.back() == '\n') << describe(r);
    for (const auto& m : mentions) EXPECT_NE(r.err.find(m), std::string::npos) << "expected '" << m << "'\n" << describe(r);
}

}  // namespace hsa::test
