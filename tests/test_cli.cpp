// Tests of the `hsa` command line: the real binary (HSA_BINARY_PATH) runs in a shell with
// stdout and stderr captured to files; exit codes are 0 (success), 1 (failure while
// running) and 2 (bad arguments or configuration), and every error is one line on stderr.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/cuda_allocator.h"
#include "core/json.h"
#include "trainers/trainer.h"
#include "tests/cli_runner.h"
#include "tests/file_test_util.h"

namespace hsa {
namespace {

using test::describe;
using test::RunResult;

class CliTest : public ::testing::Test {
protected:
    RunResult run(const std::vector<std::string>& args) {
        const std::string out = dir_ / ("stdout" + std::to_string(calls_)), err = dir_ / ("stderr" + std::to_string(calls_));
        ++calls_;
        return test::run_hsa(args, out, err);
    }

    std::string write_file(const std::string& name, const std::string& text) {
        const std::string path = dir_ / name;
        std::ofstream(path, std::ios::binary) << text;
        return path;
    }

    test::TempFolder dir_{"hsa_cli_test"};
    int calls_ = 0;
};

// An error: the exit code, exactly one "hsa: error: ..." line on stderr.
void expect_error(const RunResult& r, int code, const std::vector<std::string>& mentions) {
    test::expect_error_line(r, code, mentions);
}

bool has_line_starting(const std::string& text, const std::string& prefix) {
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (line.rfind(prefix, 0) == 0 && line.find_first_not_of(' ', prefix.size()) != std::string::npos) return true;
    }
    return false;
}

using CliInfo = CliTest;
using CliHelp = CliTest;
using CliArgs = CliTest;
using CliConfig = CliTest;
using CliTrain = CliTest;

TEST_F(CliInfo, PrintsLibraryVersionsAndGpus) {
    RunResult r = run({"info"});
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_EQ(r.err, "");
    for (const char* prefix : {"build:", "CUDA runtime:", "CUDA driver:", "NCCL:", "cuDNN:", "MPI:", "HDF5:", "GPUs:"})
        EXPECT_TRUE(has_line_starting(r.out, prefix)) << "no line '" << prefix << " <value>'\n" << r.out;
    const int gpus = cuda_device_count();
    if (gpus == 0) {
        EXPECT_TRUE(std::regex_search(r.out, std::regex("\nGPUs: +no GPU: CPU backend\n"))) << r.out;
    } else {
        EXPECT_NE(r.out.find(std::to_string(gpus) + " visible"), std::string::npos) << r.out;
        EXPECT_NE(r.out.find("  [0] "), std::string::npos) << r.out;
        EXPECT_NE(r.out.find("compute capability"), std::string::npos) << r.out;
        EXPECT_EQ(r.out.find("no GPU"), std::string::npos) << r.out;
    }
}

TEST_F(CliInfo, HelpAndBadOption) {
    RunResult help = run({"info", "--help"});
    EXPECT_EQ(help.code, 0) << describe(help);
    EXPECT_NE(help.out.find("usage: hsa info"), std::string::npos) << help.out;
    expect_error(run({"info", "--verbose"}), 2, {"--verbose"});
}

TEST_F(CliHelp, MainHelp) {
    for (const char* flag : {"--help", "-h", "help"}) {
        RunResult r = run({flag});
        EXPECT_EQ(r.code, 0) << flag << "\n" << describe(r);
        EXPECT_EQ(r.err, "");
        EXPECT_NE(r.out.find("usage: hsa <command>"), std::string::npos) << r.out;
        EXPECT_NE(r.out.find("info"), std::string::npos);
        EXPECT_NE(r.out.find("train"), std::string::npos);
        EXPECT_NE(r.out.find("generate"), std::string::npos);
        EXPECT_NE(r.out.find("eval"), std::string::npos);
        EXPECT_NE(r.out.find("hsa <command> --help"), std::string::npos) << "points to the per-command options";
    }
}

TEST_F(CliHelp, TrainHelp) {
    for (const char* flag : {"--help", "-h"}) {
        RunResult r = run({"train", flag});
        EXPECT_EQ(r.code, 0) << describe(r);
        EXPECT_EQ(r.err, "");
        for (const char* word : {"usage: hsa train", "--config", "--set", "--print-config", "--resume", "--overwrite",
                                 "log.jsonl", "loss.png", "checkpoints/step-00000100.h5", "save_every", "keep_checkpoints",
                                 "grad_accum", "max_bad_steps", "inject_nan_steps", "exit codes"})
            EXPECT_NE(r.out.find(word), std::string::npos) << word << "\n" << r.out;
    }
}

TEST_F(CliHelp, GenerateHelp) {
    for (const char* flag : {"--help", "-h"}) {
        RunResult r = run({"generate", flag});
        EXPECT_EQ(r.code, 0) << describe(r);
        EXPECT_EQ(r.err, "");
        for (const char* word : {"usage: hsa generate", "--ckpt", "--prompt-file", "--max-new", "--tokenizer", "byte", "ids",
                                 "recomputes the whole sequence", "exit codes"})
            EXPECT_NE(r.out.find(word), std::string::npos) << word << "\n" << r.out;
    }
    expect_error(run({"generate", "--bogus"}), 2, {"--bogus"});
}

TEST_F(CliHelp, EvalHelp) {
    RunResult r = run({"eval", "--help"});
    EXPECT_EQ(r.code, 0) << describe(r);
    EXPECT_EQ(r.err, "");
    for (const char* word : {"usage: hsa eval", "--ckpt", "--task", "--lengths", "--samples", "--depths", "heatmap", ".json",
                             "hsa data task list", "exit codes"})
        EXPECT_NE(r.out.find(word), std::string::npos) << word << "\n" << r.out;
    expect_error(run({"eval", "--bogus"}), 2, {"--bogus"});
}

TEST_F(CliArgs, NoArgumentsExitsTwo) {
    RunResult r = run({});
    EXPECT_EQ(r.code, 2) << describe(r);
    EXPECT_NE(r.out.find("usage: hsa <command>"), std::string::npos) << describe(r);
}

TEST_F(CliArgs, UnknownCommandAndOptions) {
    expect_error(run({"frobnicate"}), 2, {"unknown command 'frobnicate'"});
    expect_error(run({"train", "--bogus"}), 2, {"--bogus"});
    expect_error(run({"train", "--config"}), 2, {"--config"});
    expect_error(run({"train", "--set"}), 2, {"--set"});
    expect_error(run({"train", "--set", "steps=3"}), 2, {"section.key=value"});
}

TEST_F(CliConfig, MissingConfigFile) {
    RunResult r = run({"train", "--config", "/nonexistent.json"});
    expect_error(r, 2, {"/nonexistent.json"});
}

TEST_F(CliConfig, MalformedJsonNamesLineAndColumn) {
    // Line 2 has a trailing comma: the '}' at column 26 is where a field name was expected.
    const std::string path = write_file("bad.json", "{\n  \"model\": {\"hidden\": 64,}\n}\n");
    RunResult r = run({"train", "--config", path});
    expect_error(r, 2, {path, "line 2 column 26"});
    const std::string dup = write_file("dup.json", "{\"train\": {\"steps\": 1,\n \"steps\": 2}}");
    expect_error(run({"train", "--config", dup}), 2, {"line 2", "duplicate field \"steps\""});
}

TEST_F(CliConfig, UnknownFieldIsNamed) {
    const std::string path = write_file("unknown.json", R"({"model": {"hidn": 64}})");
    expect_error(run({"train", "--config", path}), 2, {"hidn"});
    expect_error(run({"train", "--set", "train.stepz=3"}), 2, {"stepz"});
    expect_error(run({"train", "--set", "optim.lr=3"}), 2, {"unknown section \"optim\""});
}

TEST_F(CliConfig, InvalidValues) {
    expect_error(run({"train", "--set", "model.heads=3"}), 2, {"model.hidden", "heads = 3"});
    expect_error(run({"train", "--set", "model.heads=3", "--print-config"}), 2, {"model.hidden"});
    expect_error(run({"train", "--set", "model.residual=sideways"}), 2, {"model.residual", "sideways"});
    expect_error(run({"train", "--set", "train.steps=2.5"}), 2, {"train.steps"});
}

TEST_F(CliConfig, PrintConfigIsValidJson) {
    RunResult r = run({"train", "--print-config"});
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_EQ(r.err, "");
    Json j;
    ASSERT_NO_THROW(j = Json::parse(r.out, "--print-config output")) << r.out;
    ASSERT_TRUE(j.is_object());
    EXPECT_NE(r.out.find("\"residual\""), std::string::npos);
    EXPECT_EQ(j.at("model").at("residual").as_string(), "brp");
    EXPECT_EQ(j.at("model").at("hidden").as_number(), 64.0);
    EXPECT_TRUE(j.contains("train"));
    EXPECT_TRUE(j.contains("task"));
    // Resolved: every default is printed, and the output reads back to the same config.
    EXPECT_EQ(j.at("train").at("seq_len").as_number(), 128.0);
    EXPECT_EQ(j.at("train").at("precision").as_string(), "bf16");
    EXPECT_EQ(j.at("task").at("rounds").as_number(), 6.0);
    EXPECT_EQ(FullConfig::from_json(j).to_json().dump(), j.dump());

    RunResult s = run({"train", "--set", "model.residual=standard", "--set", "model.train_topk=all", "--set",
                       "train.steps=7", "--print-config"});
    ASSERT_EQ(s.code, 0) << describe(s);
    Json k = Json::parse(s.out);
    EXPECT_EQ(k.at("model").at("residual").as_string(), "standard");
    EXPECT_EQ(k.at("model").at("train_topk").as_string(), "all");
    EXPECT_EQ(k.at("train").at("steps").as_number(), 7.0);
}

TEST_F(CliTrain, ShortRun) {
    RunResult r = run({"train", "--set", "train.steps=3", "--set", "train.eval_batches=1", "--set", "train.batch_size=2",
                       "--set", "train.out_dir=" + (dir_ / "run")});
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_EQ(r.err, "") << describe(r);
    EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(step +3/3 +loss [0-9]+\.[0-9]+)"))) << r.out;
    EXPECT_NE(r.out.find("recall accuracy"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("final: loss"), std::string::npos) << r.out;
    for (const char* file : {"/run/log.jsonl", "/run/config.json", "/run/checkpoints/step-00000003.h5"})
        EXPECT_TRUE(std::filesystem::exists(dir_.path() + file)) << file << "\n" << r.out;
}

TEST_F(CliTrain, DivergenceIsARuntimeFailure) {
    // An absurd learning rate without clipping blows the weights up after the first step; every
    // later step is skipped (non-finite loss) until max_bad_steps in a row stop the run.
    RunResult r = run({"train", "--set", "train.steps=10", "--set", "train.lr=1e30", "--set", "train.grad_clip=0", "--set",
                       "train.eval_batches=1", "--set", "train.batch_size=2", "--set", "train.max_bad_steps=3", "--set",
                       "train.out_dir=" + (dir_ / "run")});
    expect_error(r, 1, {"diverged", "3 consecutive steps"});
    EXPECT_NE(r.out.find("step skipped, no update"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace hsa

namespace hsa {
namespace {

// `hsa data corpus`: the two splits are disjoint, non-empty and together the whole corpus;
// bad arguments are one line and exit 2.
using CliCorpus = CliTest;

TEST_F(CliCorpus, SplitsAreDisjointParagraphsAndBadArgumentsAreOneLine) {
    expect_error(run({"data", "corpus", "--split", "validation", "--out", dir_ / "x.txt"}), 2, {"--split", "validation"});
    expect_error(run({"data", "corpus"}), 2, {"--out"});
    HSA_SKIP_WITHOUT_CORPUS();
    const std::string train = dir_ / "train.txt", held_out = dir_ / "held_out.txt";
    ASSERT_EQ(run({"data", "corpus", "--out", train}).code, 0);
    ASSERT_EQ(run({"data", "corpus", "--split", "held-out", "--out", held_out}).code, 0);
    auto paragraphs = [](const std::string& text) {
        std::set<std::string> out;
        for (size_t at = 0; at < text.size();) {
            const size_t end = text.find("\n\n", at);
            out.insert(text.substr(at, end - at));
            at = end == std::string::npos ? text.size() : end + 2;
        }
        return out;
    };
    const std::set<std::string> a = paragraphs(test::read_file_bytes(train)), b = paragraphs(test::read_file_bytes(held_out));
    EXPECT_GT(a.size(), 1000u);
    EXPECT_GT(b.size(), 100u);
    EXPECT_GT(a.size(), 5 * b.size()) << "about 10% of the documents are held out";
    size_t shared = 0;
    for (const std::string& p : b) shared += a.count(p);
    // Only texts that occur twice in the corpus (the same quotation in two fortune files)
    // may appear in both: under 2% measured.
    EXPECT_LE(shared, b.size() / 20) << "held-out paragraphs also in the training split";
    EXPECT_FALSE(std::filesystem::exists(train + ".tmp"));
}

}  // namespace
}  // namespace hsa
