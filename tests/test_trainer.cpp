// Tests of the full trainer: checkpoints (layout, atomic writes, damage detection, pruning),
// exact resume, gradient accumulation, non-finite-loss handling, the run folder (log.jsonl,
// config.json, plots) and `hsa generate`. In-process tests call run_training; the ones that
// kill or interrupt a run start the real binary (HSA_BINARY_PATH). Tiny configurations keep
// each test to a few seconds on one CPU core.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/hdf5_io.h"
#include "core/model/model.h"
#include "core/optimizer.h"
#include "core/rng.h"
#include "tests/cli_runner.h"
#include "tests/file_test_util.h"
#include "trainers/checkpoint.h"
#include "trainers/evaluate.h"
#include "trainers/generate.h"
#include "trainers/plot.h"
#include "trainers/tasks/task.h"
#include "trainers/token_shards.h"
#include "trainers/tokenizer.h"
#include "trainers/train_log.h"
#include "trainers/trainer.h"

extern char** environ;

namespace hsa {
namespace {

namespace fs = std::filesystem;
using test::describe;
using test::RunResult;

// The default model on two 128-token sequences per step: a step takes a few milliseconds.
FullConfig tiny_run(const std::string& out_dir, int64_t steps) {
    FullConfig c = FullConfig::from_json(default_train_config());
    c.train.steps = steps;
    c.train.batch_size = 2;
    c.train.warmup = 2;
    c.train.eval_every = 0;
    c.train.eval_batches = 1;
    c.train.save_every = 0;
    c.train.out_dir = out_dir;
    return c;
}

RunOptions with_outputs(std::ostream* progress = nullptr) {
    RunOptions o;
    o.progress = progress;
    return o;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

bool same_tensor_bits(const Tensor& a, const Tensor& b) {
    if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
    Tensor x = a.to(Device::CPU).contiguous(), y = b.to(Device::CPU).contiguous();
    return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

std::string read_bytes(const std::string& path) { return test::read_file_bytes(path); }

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string checkpoint_path(const std::string& out_dir, int64_t step) {
    return out_dir + "/checkpoints/" + checkpoint_file_name(step);
}

std::vector<int64_t> checkpoint_steps(const std::string& out_dir) {
    std::vector<int64_t> steps;
    for (const auto& f : list_checkpoints(out_dir + "/checkpoints")) steps.push_back(f.step);
    return steps;
}

// ============================================================================ configuration

TEST(TrainerConfig, NewFieldsHaveDefaultsAreValidatedAndRoundTrip) {
    const FullConfig c = FullConfig::from_json(default_train_config());
    EXPECT_EQ(c.train.out_dir, "runs/tiny");
    EXPECT_EQ(c.train.save_every, 100);
    EXPECT_EQ(c.train.keep_checkpoints, 3);
    EXPECT_EQ(c.train.grad_accum, 1);
    EXPECT_EQ(c.train.max_bad_steps, 5);
    EXPECT_TRUE(c.train.inject_nan_steps.empty());
    EXPECT_EQ(FullConfig::from_json(c.to_json()).to_json().dump(), c.to_json().dump());

    auto error_for = [](const char* assignment) {
        Json root = default_train_config();
        apply_override(root, assignment);
        try {
            FullConfig::from_json(root);
        } catch (const ConfigError& e) {
            return std::string(e.what());
        }
        return std::string("(no error)");
    };
    EXPECT_NE(error_for("train.grad_accum=0").find("train.grad_accum"), std::string::npos);
    EXPECT_NE(error_for("train.save_every=-1").find("train.save_every"), std::string::npos);
    EXPECT_NE(error_for("train.keep_checkpoints=-2").find("train.keep_checkpoints"), std::string::npos);
    EXPECT_NE(error_for("train.max_bad_steps=0").find("train.max_bad_steps"), std::string::npos);
    EXPECT_NE(error_for("train.out_dir=\"\"").find("train.out_dir"), std::string::npos);
    EXPECT_NE(error_for("train.inject_nan_steps=3").find("train.inject_nan_steps"), std::string::npos);
    EXPECT_NE(error_for("train.inject_nan_steps=[0]").find("train.inject_nan_steps"), std::string::npos);
    EXPECT_NE(error_for("train.save_evry=3").find("unknown field \"save_evry\""), std::string::npos);

    Json root = default_train_config();
    apply_override(root, "train.inject_nan_steps=[4,7]");
    const FullConfig injected = FullConfig::from_json(root);
    EXPECT_EQ(injected.train.inject_nan_steps, (std::vector<int64_t>{4, 7}));
    EXPECT_EQ(FullConfig::from_json(injected.to_json()).train.inject_nan_steps, injected.train.inject_nan_steps);
}

// ============================================================================ optimizer

// clipped_step (the clipping factor inside the update) leaves the gradients unscaled and
// gives the parameters and moments of clip_grad_norm then step, bit for bit: with clipping
// active (max norm below the norm), inactive, and off (0).
TEST(Optimizer, ClippedStepEqualsClipThenStep) {
    for (double max_norm : {0.05, 1e9, 0.0}) {
        SCOPED_TRACE("max_norm " + std::to_string(max_norm));
        Model a(ModelConfig{}, 5), b(ModelConfig{}, 5);
        AdamW opt_a(a.parameters(), AdamWConfig{}), opt_b(b.parameters(), AdamWConfig{});
        Rng rng(17);
        for (int step = 0; step < 2; ++step) {
            for (size_t i = 0; i < a.parameters().entries().size(); ++i) {  // fresh gradients, as in training
                if (i % 7 == 3) continue;  // some parameters without a gradient
                Tensor g = rng.normal(a.parameters().entries()[i].tensor.shape(), 0.01f);
                a.parameters().entries()[i].tensor.set_grad(g.clone());
                b.parameters().entries()[i].tensor.set_grad(g.clone());
            }
            const double norm_a = opt_a.clip_grad_norm(max_norm);
            opt_a.step(1e-3f);
            const double norm_b = opt_b.grad_norm();
            std::vector<std::vector<float>> grads_before;
            for (const auto& e : b.parameters().entries())
                grads_before.push_back(e.tensor.grad().defined() ? e.tensor.grad().to_vector() : std::vector<float>{});
            opt_b.clipped_step(1e-3f, max_norm, norm_b);
            EXPECT_EQ(norm_a, norm_b);
            for (size_t i = 0; i < a.parameters().entries().size(); ++i) {
                const auto& ea = a.parameters().entries()[i];
                const auto& eb = b.parameters().entries()[i];
                ASSERT_EQ(ea.tensor.to_vector(), eb.tensor.to_vector()) << ea.name;
                ASSERT_EQ(opt_a.first_moments()[i].to_vector(), opt_b.first_moments()[i].to_vector()) << ea.name;
                ASSERT_EQ(opt_a.second_moments()[i].to_vector(), opt_b.second_moments()[i].to_vector()) << ea.name;
                if (eb.tensor.grad().defined()) {
                    EXPECT_EQ(eb.tensor.grad().to_vector(), grads_before[i]) << eb.name << ": the gradient is not scaled";
                }
            }
        }
    }
}

// ============================================================================ checkpoint files

// A model and an optimizer whose moments hold distinct random values.
struct TrainedState {
    Model model;
    AdamW optimizer;
    explicit TrainedState(uint64_t seed) : model(ModelConfig{}, seed), optimizer(model.parameters(), AdamWConfig{}) {
        Rng rng(seed + 100);
        for (auto& m : optimizer.first_moments()) rng.normal_(m);
        for (auto& v : optimizer.second_moments()) rng.uniform_(v, 0.0f, 1.0f);
        optimizer.set_steps_taken(7);
    }
};

CheckpointState sample_state() {
    CheckpointState s;
    s.config = FullConfig::from_json(default_train_config()).to_json();
    s.step = 9;
    s.tokens_seen = 9216;
    s.optimizer_steps = 7;
    s.skipped_steps = 2;
    s.consecutive_bad_steps = 1;
    s.data_state = Json::parse(R"({"source": "recall", "next_batch": 9})");
    s.rng_state = Json::parse(R"({"seed": 1})");
    return s;
}

TEST(Checkpoint, RoundTripKeepsEveryTensorAndAttribute) {
    test::TempFolder dir("hsa_trainer_test");
    TrainedState saved(3);
    const std::string path = dir / checkpoint_file_name(9);
    save_checkpoint(path, sample_state(), saved.model.parameters(), saved.optimizer);
    EXPECT_FALSE(fs::exists(path + ".tmp")) << "the temporary file is renamed";

    {  // The documented layout, readable by any HDF5 reader.
        Hdf5File file(path);
        for (const auto& e : saved.model.parameters().entries()) {
            EXPECT_TRUE(file.is_dataset("/params/" + e.name)) << e.name;
            EXPECT_TRUE(file.is_dataset("/optim/" + e.name + "/m")) << e.name;
            EXPECT_TRUE(file.is_dataset("/optim/" + e.name + "/v")) << e.name;
            EXPECT_EQ(file.dataset_type("/params/" + e.name), "f32");
        }
        EXPECT_EQ(file.read_int_attribute("/", "step"), 9);
        EXPECT_EQ(file.read_int_attribute("/", "tokens_seen"), 9216);
        EXPECT_EQ(Json::parse(file.read_string_attribute("/", "config")).at("model").at("hidden").as_number(), 64.0);
    }

    const Checkpoint c = read_checkpoint(path);
    EXPECT_EQ(c.state.step, 9);
    EXPECT_EQ(c.state.tokens_seen, 9216);
    EXPECT_EQ(c.state.optimizer_steps, 7);
    EXPECT_EQ(c.state.skipped_steps, 2);
    EXPECT_EQ(c.state.consecutive_bad_steps, 1);
    EXPECT_EQ(c.state.data_state.dump(), sample_state().data_state.dump());
    EXPECT_EQ(c.state.config.dump(), sample_state().config.dump());

    TrainedState restored(4);  // different initial weights and moments
    apply_checkpoint(c, restored.model.parameters(), &restored.optimizer);
    const auto& a = saved.model.parameters().entries();
    const auto& b = restored.model.parameters().entries();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_TRUE(same_tensor_bits(a[i].tensor, b[i].tensor)) << a[i].name;
        EXPECT_TRUE(same_tensor_bits(saved.optimizer.first_moments()[i], restored.optimizer.first_moments()[i])) << a[i].name;
        EXPECT_TRUE(same_tensor_bits(saved.optimizer.second_moments()[i], restored.optimizer.second_moments()[i])) << a[i].name;
    }
    EXPECT_EQ(restored.optimizer.steps_taken(), 7);

    // A model of another shape is refused, naming the parameter.
    ModelConfig wider;
    wider.hidden = 128;
    wider.mlp_hidden = 256;
    Model other(wider, 1);
    try {
        apply_checkpoint(c, other.parameters(), nullptr);
        ADD_FAILURE() << "a checkpoint of another shape was applied";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("shape"), std::string::npos) << e.what();
    }
}

TEST(Checkpoint, DamageIsDetected) {
    test::TempFolder dir("hsa_trainer_test");
    TrainedState saved(5);
    const std::string path = dir / checkpoint_file_name(1);
    save_checkpoint(path, sample_state(), saved.model.parameters(), saved.optimizer);
    const std::string good = read_bytes(path);

    // One flipped bit inside a stored parameter: found by its (random) float bytes.
    const Tensor first = saved.model.parameters().entries()[0].tensor.contiguous();
    const std::string needle(static_cast<const char*>(first.raw_data()), 64);
    const size_t at = good.find(needle);
    ASSERT_NE(at, std::string::npos);
    std::string flipped = good;
    flipped[at + 17] ^= 0x04;
    write_bytes(path, flipped);
    try {
        read_checkpoint(path);
        ADD_FAILURE() << "a flipped bit went unnoticed";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
        EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line";
    }

    write_bytes(path, good.substr(0, good.size() / 2));  // truncated
    EXPECT_THROW(read_checkpoint(path), Error);
    write_bytes(path, "not an HDF5 file at all");
    EXPECT_THROW(read_checkpoint(path), Error);
    write_bytes(path, good);
    EXPECT_NO_THROW(read_checkpoint(path));
}

TEST(Checkpoint, ListingPruningAndTemporaries) {
    test::TempFolder dir("hsa_trainer_test");
    for (const char* name : {"step-00000010.h5", "step-00000002.h5", "step-00000005.h5", "step-00000001.h5",
                             "step-00000003.h5.tmp", "other.h5", "step-abc.h5", "config.json"})
        write_bytes(dir / name, "x");
    std::vector<int64_t> steps;
    for (const auto& f : list_checkpoints(dir.path())) steps.push_back(f.step);
    EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 5, 10}));
    EXPECT_EQ(remove_checkpoint_temporaries(dir.path()), 1);
    EXPECT_FALSE(fs::exists(dir / "step-00000003.h5.tmp"));
    prune_checkpoints(dir.path(), 2);
    steps.clear();
    for (const auto& f : list_checkpoints(dir.path())) steps.push_back(f.step);
    EXPECT_EQ(steps, (std::vector<int64_t>{5, 10}));
    EXPECT_TRUE(fs::exists(dir / "other.h5")) << "only checkpoints are pruned";
    EXPECT_TRUE(list_checkpoints(dir / "missing").empty());
    EXPECT_EQ(checkpoint_file_name(100), "step-00000100.h5");
}

TEST(Checkpoint, ConfigDifferenceNamesTheFieldThatChangesTheMath) {
    const Json base = FullConfig::from_json(default_train_config()).to_json();
    EXPECT_EQ(first_config_difference(base, base), "");
    Json bookkeeping = base;
    bookkeeping["train"]["out_dir"] = "elsewhere";
    bookkeeping["train"]["save_every"] = int64_t{7};
    bookkeeping["train"]["eval_every"] = int64_t{3};
    bookkeeping["train"]["max_bad_steps"] = int64_t{9};
    EXPECT_EQ(first_config_difference(base, bookkeeping), "");
    Json narrower = base;
    narrower["model"]["hidden"] = int64_t{32};
    EXPECT_EQ(first_config_difference(base, narrower), "model.hidden: checkpoint 64, now 32");
    Json accumulated = base;
    accumulated["train"]["grad_accum"] = int64_t{2};
    EXPECT_EQ(first_config_difference(base, accumulated), "train.grad_accum: checkpoint 1, now 2");
    Json several = accumulated;
    several["data"]["tokenizer"] = "other";
    several["model"]["hidden"] = int64_t{32};
    several["train"]["lr"] = 0.5;
    EXPECT_EQ(first_config_difference(base, several),
              "model.hidden: checkpoint 64, now 32 (and 3 more: train.grad_accum, train.lr, data.tokenizer)");
}

// ============================================================================ exact resume

TEST(TrainerResume, ResumedLossesEqualTheUninterruptedRunBitForBit) {
    test::TempFolder dir("hsa_trainer_test");
    FullConfig config = tiny_run(dir.path(), 8);
    config.train.save_every = 4;
    config.train.eval_every = 4;
    const TrainResult full = run_training(config, with_outputs());
    ASSERT_EQ(full.losses.size(), 8u);
    EXPECT_EQ(checkpoint_steps(dir.path()), (std::vector<int64_t>{4, 8}));
    const std::vector<Json> full_log = read_train_log(dir / "log.jsonl");

    // Back to the state after step 4, as if the run had died before its step-8 save.
    fs::remove(checkpoint_path(dir.path(), 8));
    RunOptions resume = with_outputs();
    resume.resume = true;
    const TrainResult resumed = run_training(config, resume);  // a fresh model, optimizer and data source
    EXPECT_EQ(resumed.first_step, 4);
    ASSERT_EQ(resumed.losses.size(), 4u);
    for (size_t i = 0; i < 4; ++i) {
        EXPECT_TRUE(same_bits(resumed.losses[i], full.losses[4 + i]))
            << "step " << 5 + i << ": " << resumed.losses[i] << " vs " << full.losses[4 + i];
        EXPECT_EQ(resumed.grad_norms[i], full.grad_norms[4 + i]) << "step " << 5 + i;
    }
    EXPECT_EQ(resumed.final_accuracy, full.final_accuracy);
    EXPECT_EQ(resumed.final_eval_loss, full.final_eval_loss);

    // The log reads as one run: eight records, the same losses.
    const std::vector<Json> log = read_train_log(dir / "log.jsonl");
    ASSERT_EQ(log.size(), 8u);
    for (size_t i = 0; i < 8; ++i) {
        EXPECT_EQ(log[i].at("step").as_number(), static_cast<double>(i + 1));
        EXPECT_EQ(log[i].at("loss").as_number(), full_log[i].at("loss").as_number()) << "step " << i + 1;
    }
    // The final checkpoints agree bit for bit too.
    const Checkpoint again = read_checkpoint(checkpoint_path(dir.path(), 8));
    EXPECT_EQ(again.state.optimizer_steps, 8);
    EXPECT_EQ(again.state.tokens_seen, 8 * 2 * 128);
}

TEST(TrainerResume, InterruptWritesACheckpointAndResumeContinuesExactly) {
    test::TempFolder reference_dir("hsa_trainer_test_reference"), dir("hsa_trainer_test");
    const TrainResult reference = run_training(tiny_run(reference_dir.path(), 6), with_outputs());

    FullConfig config = tiny_run(dir.path(), 6);  // save_every 0: only the stop writes one
    volatile std::sig_atomic_t stop = 1;
    RunOptions interrupted = with_outputs();
    interrupted.stop_requested = &stop;
    try {
        run_training(config, interrupted);
        ADD_FAILURE() << "the run did not stop";
    } catch (const TrainingInterrupted& e) {
        EXPECT_NE(std::string(e.what()).find("interrupted at step 1 of 6"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos) << e.what();
    }
    EXPECT_EQ(checkpoint_steps(dir.path()), (std::vector<int64_t>{1}));

    RunOptions resume = with_outputs();
    resume.resume = true;
    const TrainResult rest = run_training(config, resume);
    ASSERT_EQ(rest.losses.size(), 5u);
    for (size_t i = 0; i < 5; ++i) EXPECT_TRUE(same_bits(rest.losses[i], reference.losses[1 + i])) << "step " << i + 2;
}

TEST(TrainerResume, DamagedNewestCheckpointFallsBackToThePreviousOne) {
    test::TempFolder dir("hsa_trainer_test");
    FullConfig config = tiny_run(dir.path(), 6);
    config.train.save_every = 2;
    const TrainResult full = run_training(config, with_outputs());
    const std::string newest = checkpoint_path(dir.path(), 6);
    const std::string bytes = read_bytes(newest);
    write_bytes(newest, bytes.substr(0, bytes.size() / 3));  // a disk that lost the tail

    std::ostringstream progress;
    RunOptions resume = with_outputs(&progress);
    resume.resume = true;
    const TrainResult resumed = run_training(config, resume);
    const std::string out = progress.str();
    // One warning about checkpoints (a machine without gnuplot adds one about the plots).
    size_t warnings = 0;
    for (size_t p = out.find("warning: cannot use checkpoint"); p != std::string::npos;
         p = out.find("warning: cannot use checkpoint", p + 1))
        ++warnings;
    EXPECT_EQ(warnings, 1u) << out;
    EXPECT_NE(out.find("cannot use checkpoint " + newest), std::string::npos) << out;
    EXPECT_NE(out.find("falling back to " + checkpoint_path(dir.path(), 4)), std::string::npos) << out;
    EXPECT_EQ(resumed.first_step, 4);
    ASSERT_EQ(resumed.losses.size(), 2u);
    EXPECT_TRUE(same_bits(resumed.losses[0], full.losses[4]));
    EXPECT_TRUE(same_bits(resumed.losses[1], full.losses[5]));
    EXPECT_NO_THROW(read_checkpoint(newest)) << "the damaged file was replaced by the new save";
}

TEST(TrainerResume, NoReadableCheckpointIsAnErrorNotAFreshStart) {
    test::TempFolder dir("hsa_trainer_test");
    FullConfig config = tiny_run(dir.path(), 4);
    config.train.save_every = 2;
    run_training(config, with_outputs());
    for (int64_t step : {2, 4}) write_bytes(checkpoint_path(dir.path(), step), "garbage");
    RunOptions resume = with_outputs();
    resume.resume = true;
    try {
        run_training(config, resume);
        ADD_FAILURE() << "resumed from garbage";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("none of the 2 checkpoints"), std::string::npos) << e.what();
    }
}

TEST(TrainerResume, MismatchedConfigurationIsRefusedNamingTheField) {
    test::TempFolder dir("hsa_trainer_test");
    FullConfig config = tiny_run(dir.path(), 3);
    run_training(config, with_outputs());
    RunOptions resume = with_outputs();
    resume.resume = true;
    auto resume_error = [&](FullConfig changed) {
        try {
            run_training(changed, resume);
        } catch (const ConfigError& e) {
            return std::string(e.what());
        }
        return std::string("(no error)");
    };
    FullConfig lr = config;
    lr.train.lr = 0.02;
    const std::string m = resume_error(lr);
    EXPECT_NE(m.find("train.lr: checkpoint 0.01, now 0.02"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "one line";
    FullConfig topk = config;
    topk.model.topk = 1;
    topk.model.train_topk = 1;
    EXPECT_NE(resume_error(topk).find("model.topk"), std::string::npos);
    // Bookkeeping may change: the run (complete) resumes and has nothing to do.
    FullConfig bookkeeping = config;
    bookkeeping.train.eval_every = 1;
    bookkeeping.train.keep_checkpoints = 1;
    EXPECT_TRUE(run_training(bookkeeping, resume).losses.empty());
}

TEST(TrainerResume, EarlierCheckpointsNeedResumeOrOverwrite) {
    test::TempFolder dir("hsa_trainer_test");
    const FullConfig config = tiny_run(dir.path(), 2);
    const TrainResult first = run_training(config, with_outputs());
    try {
        run_training(config, with_outputs());
        ADD_FAILURE() << "a fresh run silently mixed with an earlier run's checkpoints";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
    }
    RunOptions overwrite = with_outputs();
    overwrite.overwrite = true;
    const TrainResult again = run_training(config, overwrite);
    ASSERT_EQ(again.losses.size(), 2u);
    EXPECT_TRUE(same_bits(again.losses[1], first.losses[1]));
    EXPECT_EQ(read_train_log(dir / "log.jsonl").size(), 2u);
}

TEST(TrainerResume, ResumeWithoutACheckpointStartsAtStepZeroAndSaysSo) {
    test::TempFolder dir("hsa_trainer_test");
    const FullConfig config = tiny_run(dir.path(), 2);
    std::ostringstream progress;
    RunOptions resume = with_outputs(&progress);
    resume.resume = true;
    const TrainResult result = run_training(config, resume);
    EXPECT_NE(progress.str().find("no checkpoint in " + dir.path() + "/checkpoints: starting at step 0"), std::string::npos)
        << progress.str();
    const TrainResult in_memory = train_recall(config, nullptr);
    ASSERT_EQ(result.losses.size(), 2u);
    EXPECT_TRUE(same_bits(result.losses[1], in_memory.losses[1]));
}

// ============================================================================ gradient accumulation

// A step over grad_accum micro-batches of B sequences sees the same 2B sequences as one
// batch of 2B, and weights each micro-batch's mean loss by its share of the loss positions,
// so both compute the same gradient up to float summation order. Tolerance: relative 1e-5
// on losses and gradient norms over 4 steps (measured differences are around 1e-7; a
// wrong weighting or different data differs by more than 1e-2).
TEST(TrainerGradAccum, TwoMicroBatchesOfBEqualOneBatchOfTwoB) {
    FullConfig one = tiny_run("unused", 4);
    one.train.batch_size = 4;
    FullConfig two = one;
    two.train.batch_size = 2;
    two.train.grad_accum = 2;
    const TrainResult a = train_recall(one, nullptr);
    const TrainResult b = train_recall(two, nullptr);
    ASSERT_EQ(a.losses.size(), 4u);
    ASSERT_EQ(b.losses.size(), 4u);
    for (size_t i = 0; i < 4; ++i) {
        EXPECT_NEAR(b.losses[i], a.losses[i], 1e-5 * std::fabs(a.losses[i])) << "step " << i + 1;
        EXPECT_NEAR(b.grad_norms[i], a.grad_norms[i], 1e-5 * a.grad_norms[i]) << "step " << i + 1;
    }
    // Control: the same number of sequences in one batch of B per step is a different run.
    FullConfig half = one;
    half.train.batch_size = 2;
    const TrainResult c = train_recall(half, nullptr);
    EXPECT_GT(std::fabs(c.losses[0] - a.losses[0]), 1e-3);
}

// ============================================================================ NaN / Inf handling

TEST(TrainerNan, InjectedNanStepIsSkippedWithoutAnUpdate) {
    test::TempFolder dir("hsa_trainer_test");
    FullConfig config = tiny_run(dir.path(), 4);
    config.train.save_every = 1;
    config.train.keep_checkpoints = 0;
    config.train.inject_nan_steps = {3};
    std::ostringstream progress;
    const TrainResult result = run_training(config, with_outputs(&progress));
    ASSERT_EQ(result.losses.size(), 4u);
    EXPECT_TRUE(std::isnan(result.losses[2]));
    EXPECT_TRUE(std::isfinite(result.losses[3]));
    EXPECT_EQ(result.skipped_steps, 1);
    EXPECT_NE(progress.str().find("step 3/4: loss is nan: step skipped, no update (1 in a row"), std::string::npos)
        << progress.str();

    // No update at step 3: its checkpoint holds step 2's weights and moments.
    const Checkpoint two = read_checkpoint(checkpoint_path(dir.path(), 2));
    const Checkpoint three = read_checkpoint(checkpoint_path(dir.path(), 3));
    const Checkpoint four = read_checkpoint(checkpoint_path(dir.path(), 4));
    for (size_t i = 0; i < two.params.size(); ++i) {
        EXPECT_TRUE(same_tensor_bits(two.params[i], three.params[i])) << two.parameter_names[i];
        EXPECT_TRUE(same_tensor_bits(two.first_moments[i], three.first_moments[i])) << two.parameter_names[i];
        EXPECT_TRUE(same_tensor_bits(two.second_moments[i], three.second_moments[i])) << two.parameter_names[i];
    }
    EXPECT_FALSE(same_tensor_bits(three.params[0], four.params[0])) << "training went on after the bad step";
    EXPECT_EQ(three.state.optimizer_steps, 2);
    EXPECT_EQ(three.state.consecutive_bad_steps, 1);
    EXPECT_EQ(four.state.optimizer_steps, 3);
    EXPECT_EQ(four.state.consecutive_bad_steps, 0);
    EXPECT_EQ(four.state.skipped_steps, 1);

    const std::vector<Json> log = read_train_log(dir / "log.jsonl");
    ASSERT_EQ(log.size(), 4u);
    EXPECT_TRUE(log[2].at("loss").is_null());
    EXPECT_EQ(log[2].at("skipped").as_string(), "loss is nan");
    EXPECT_TRUE(log[3].at("loss").is_number());
    EXPECT_FALSE(log[3].contains("skipped"));
}

TEST(TrainerNan, StopsAfterMaxBadStepsInARowKeepingItsCheckpoints) {
    test::TempFolder dir("hsa_trainer_test");
    FullConfig config = tiny_run(dir.path(), 10);
    config.train.save_every = 1;
    config.train.keep_checkpoints = 0;
    config.train.max_bad_steps = 3;
    config.train.inject_nan_steps = {2, 3, 4};
    try {
        run_training(config, with_outputs());
        ADD_FAILURE() << "the run went on after 3 bad steps in a row";
    } catch (const TrainingDiverged& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("3 consecutive steps without an update"), std::string::npos) << m;
        EXPECT_NE(m.find("step 4: loss is nan"), std::string::npos) << m;
        EXPECT_NE(m.find("train.max_bad_steps = 3"), std::string::npos) << m;
        EXPECT_NE(m.find(checkpoint_path(dir.path(), 3)), std::string::npos) << m;
        EXPECT_EQ(m.find('\n'), std::string::npos) << "one line";
    }
    EXPECT_EQ(checkpoint_steps(dir.path()), (std::vector<int64_t>{1, 2, 3}));
    for (int64_t step : {1, 2, 3}) EXPECT_NO_THROW(read_checkpoint(checkpoint_path(dir.path(), step)));
    EXPECT_EQ(read_train_log(dir / "log.jsonl").size(), 4u) << "the stopping step is logged";

    // Two in a row, then a good step, resets the count: the run completes.
    test::TempFolder other("hsa_trainer_test_other");
    FullConfig recovers = tiny_run(other.path(), 5);
    recovers.train.max_bad_steps = 3;
    recovers.train.inject_nan_steps = {2, 3};
    const TrainResult result = run_training(recovers, with_outputs());
    EXPECT_EQ(result.skipped_steps, 2);
    EXPECT_TRUE(std::isfinite(result.losses.back()));
}

// ============================================================================ the run folder

TEST(TrainerOutputs, LogConfigAndProgressHaveTheDocumentedFields) {
    test::TempFolder dir("hsa_trainer_test");
    FullConfig config = tiny_run(dir.path(), 4);
    config.train.eval_every = 2;
    config.train.log_every = 2;
    std::ostringstream progress;
    run_training(config, with_outputs(&progress));
    const std::vector<Json> log = read_train_log(dir / "log.jsonl");
    ASSERT_EQ(log.size(), 4u);
    for (size_t i = 0; i < log.size(); ++i) {
        const Json& r = log[i];
        for (const char* field : {"step", "loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "peak_memory_bytes"})
            ASSERT_TRUE(r.contains(field) && r.at(field).is_number()) << field << " in " << r.dump();
        EXPECT_EQ(r.at("step").as_number(), static_cast<double>(i + 1));
        EXPECT_EQ(r.at("lr").as_number(), config.train.lr_at(static_cast<int64_t>(i)));
        EXPECT_EQ(r.at("tokens_seen").as_number(), static_cast<double>((i + 1) * 2 * 128));
        EXPECT_GT(r.at("tokens_per_s").as_number(), 0);
        EXPECT_GT(r.at("peak_memory_bytes").as_number(), 1e6);
        const bool eval_step = (i + 1) % 2 == 0;
        EXPECT_EQ(r.contains("eval_loss"), eval_step) << r.dump();
        EXPECT_EQ(r.contains("eval_accuracy"), eval_step) << r.dump();
    }
    const Json written = Json::parse(read_bytes(dir / "config.json"));
    EXPECT_EQ(written.dump(), config.to_json().dump());
    EXPECT_NE(progress.str().find("step     2/4  loss "), std::string::npos) << progress.str();
    EXPECT_NE(progress.str().find(" tok/s  ETA "), std::string::npos) << progress.str();
    EXPECT_NE(progress.str().find("eval at step 4"), std::string::npos) << progress.str();
}

TEST(TrainerOutputs, LossAndAccuracyPlotsArePngs) {
    if (!gnuplot_available()) GTEST_SKIP() << "gnuplot is not installed (launch/setup.sh installs gnuplot-nox)";
    test::TempFolder dir("hsa_trainer_test");
    FullConfig config = tiny_run(dir.path(), 4);
    config.train.eval_every = 2;
    run_training(config, with_outputs());
    const std::string magic = "\x89PNG\r\n\x1a\n";
    for (const char* name : {"loss.png", "accuracy.png"}) {
        const std::string bytes = read_bytes(dir / name);
        ASSERT_GT(bytes.size(), 1000u) << name;
        EXPECT_EQ(bytes.substr(0, 8), magic) << name;
    }
    EXPECT_FALSE(fs::exists(dir / "loss.png.tmp.png"));

    // The heatmap of `hsa eval` goes through the same driver.
    HeatmapPlot heatmap{"accuracy", "length", "depth", {"4K", "8K"}, {"0.0", "0.5", "1.0"}, {{1, 0.5}, {0.25, NAN}, {0, 1}}, 0, 1};
    plot_heatmap(heatmap, dir / "heatmap.png");
    EXPECT_EQ(read_bytes(dir / "heatmap.png").substr(0, 8), magic);
}

TEST(TrainerOutputs, WithoutGnuplotOneWarningAndNoPlot) {
    const char* saved = std::getenv("PATH");
    const std::string old_path = saved ? saved : "";
    setenv("PATH", "/nonexistent-folder", 1);
    test::TempFolder dir("hsa_trainer_test");
    FullConfig config = tiny_run(dir.path(), 3);
    config.train.save_every = 1;  // several chances to draw
    std::ostringstream progress;
    EXPECT_NO_THROW(run_training(config, with_outputs(&progress)));
    setenv("PATH", old_path.c_str(), 1);
    const std::string out = progress.str();
    EXPECT_NE(out.find("warning: gnuplot not found"), std::string::npos) << out;
    EXPECT_EQ(out.find("warning:"), out.rfind("warning:")) << "one warning\n" << out;
    EXPECT_FALSE(fs::exists(dir / "loss.png"));
    EXPECT_EQ(checkpoint_steps(dir.path()), (std::vector<int64_t>{1, 2, 3}));
}

TEST(TrainerOutputs, TornLastLogLineIsIgnored) {
    test::TempFolder dir("hsa_trainer_test");
    write_bytes(dir / "log.jsonl", "{\"step\":1,\"loss\":2}\n{\"step\":2,\"lo");
    ASSERT_EQ(read_train_log(dir / "log.jsonl").size(), 1u);
    write_bytes(dir / "log.jsonl", "{\"step\":1,\"loss\":2}\n{\"step\":2,\"lo\n{\"step\":3}\n");
    EXPECT_THROW(read_train_log(dir / "log.jsonl"), Error) << "damage in the middle is not silently skipped";
    TrainLog log(dir / "log.jsonl.2", 0);
    log.append(Json::parse(R"({"step": 1})"));
    EXPECT_EQ(read_train_log(dir / "log.jsonl.2").size(), 1u);
}

// ============================================================================ the real binary

// Starts `hsa args...` with stdout and stderr to files; returns the process id.
pid_t spawn_hsa(const std::vector<std::string>& args, const std::string& out_path, const std::string& err_path) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<std::string> storage = {HSA_BINARY_PATH};
    storage.insert(storage.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& s : storage) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_t pid = -1;
    const int status = posix_spawn(&pid, HSA_BINARY_PATH, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    return status == 0 ? pid : -1;
}

// Waits for a process; its exit code, or -signal when a signal ended it.
int wait_for(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return -WTERMSIG(status);
    return -1000;
}

bool has_temporary_checkpoint(const std::string& folder) {
    std::error_code ec;
    for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.size() > 7 && name.compare(name.size() - 7, 7, ".h5.tmp") == 0) return true;
    }
    return false;
}

class TrainerCli : public ::testing::Test {
protected:
    RunResult run(const std::vector<std::string>& args) {
        const std::string out = dir_ / ("stdout" + std::to_string(calls_)), err = dir_ / ("stderr" + std::to_string(calls_));
        ++calls_;
        return test::run_hsa(args, out, err);
    }
    // A config file for a run of `steps` steps writing to out_dir, checkpointing every step.
    std::string config_file(const std::string& out_dir, int64_t steps, int64_t batch_size = 1) {
        const std::string path = dir_ / ("config" + std::to_string(calls_++) + ".json");
        write_bytes(path, R"({"train": {"steps": )" + std::to_string(steps) + R"(, "batch_size": )" + std::to_string(batch_size) +
                              R"(, "warmup": 2, "save_every": 1, "keep_checkpoints": 3, "eval_every": 0, "eval_batches": 1,)"
                              R"( "log_every": 1, "out_dir": ")" + out_dir + R"("}})");
        return path;
    }
    // log.jsonl's losses and gradient norms, step by step.
    static std::vector<std::pair<double, double>> log_numbers(const std::string& out_dir) {
        std::vector<std::pair<double, double>> numbers;
        for (const Json& r : read_train_log(out_dir + "/log.jsonl"))
            numbers.emplace_back(r.at("loss").as_number(), r.at("grad_norm").as_number());
        return numbers;
    }
    test::TempFolder dir_{"hsa_trainer_test"};
    int calls_ = 0;
};

// The process is killed many times, half of them at the moment a checkpoint's temporary
// file exists (mid-write), the rest at random times; after every kill each checkpoint in
// the folder must load, and the run resumed to its end must log the losses of a run that
// was never killed, bit for bit.
TEST_F(TrainerCli, KilledDuringCheckpointWritesLosesNoCheckpointAndResumesExactly) {
    const std::string reference_dir = dir_ / "reference", killed_dir = dir_ / "killed";
    const int64_t steps = 300;  // a few milliseconds each: long enough that every kill lands before the end
    RunResult reference = run({"train", "--config", config_file(reference_dir, steps)});
    ASSERT_EQ(reference.code, 0) << describe(reference);
    const auto expected = log_numbers(reference_dir);
    ASSERT_EQ(expected.size(), static_cast<size_t>(steps));

    const std::string config = config_file(killed_dir, steps);
    const std::string checkpoints = killed_dir + "/checkpoints";
    std::mt19937 random(12345);
    int kills = 0, kills_mid_write = 0;
    for (int attempt = 0; attempt < 12; ++attempt) {
        const pid_t pid = spawn_hsa({"train", "--config", config, "--resume"}, dir_ / "kill.out", dir_ / "kill.err");
        ASSERT_GT(pid, 0);
        bool mid_write = false;
        if (attempt % 2 == 0) {  // wait for a temporary checkpoint file, then kill at once
            const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
            while (std::chrono::steady_clock::now() < give_up && !mid_write) {
                if (waitpid(pid, nullptr, WNOHANG) != 0) break;  // finished (or failed) on its own
                mid_write = has_temporary_checkpoint(checkpoints);
            }
        } else {
            std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(30, 150)(random)));
        }
        const bool killed = ::kill(pid, SIGKILL) == 0;
        const int code = wait_for(pid);
        if (code == 0) break;  // the run completed before the kill
        if (code >= 0 && code != 0) FAIL() << "hsa train failed on its own:\n" << read_bytes(dir_ / "kill.err");
        ASSERT_TRUE(killed);
        ++kills;
        if (mid_write) ++kills_mid_write;
        for (const auto& file : list_checkpoints(checkpoints))
            EXPECT_NO_THROW(read_checkpoint(file.path)) << "after kill " << kills << ": " << file.path << " does not load";
    }
    std::cout << "[          ] " << kills << " kills, " << kills_mid_write << " while a checkpoint was being written\n";
    EXPECT_GE(kills, 6);
    EXPECT_GE(kills_mid_write, 1) << "no kill landed while a checkpoint was being written";

    RunResult finish = run({"train", "--config", config, "--resume"});
    ASSERT_EQ(finish.code, 0) << describe(finish);
    EXPECT_FALSE(has_temporary_checkpoint(checkpoints));
    const auto got = log_numbers(killed_dir);
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].first, expected[i].first) << "loss of step " << i + 1;
        EXPECT_EQ(got[i].second, expected[i].second) << "grad norm of step " << i + 1;
    }
    EXPECT_EQ(checkpoint_steps(killed_dir), (std::vector<int64_t>{steps - 2, steps - 1, steps}));
}

TEST_F(TrainerCli, SigtermWritesACheckpointAndExitsOne) {
    const std::string reference_dir = dir_ / "reference", out_dir = dir_ / "run";
    const int64_t steps = 200;
    const std::string config = config_file(out_dir, steps);
    const pid_t pid = spawn_hsa({"train", "--config", config, "--set", "train.save_every=0"}, dir_ / "term.out", dir_ / "term.err");
    ASSERT_GT(pid, 0);
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < give_up && read_train_log(out_dir + "/log.jsonl").size() < 3)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ASSERT_EQ(::kill(pid, SIGTERM), 0);
    const int code = wait_for(pid);
    RunResult r{code, read_bytes(dir_ / "term.out"), read_bytes(dir_ / "term.err")};
    test::expect_error_line(r, 1, {"interrupted at step", "--resume"});
    const std::vector<int64_t> saved = checkpoint_steps(out_dir);
    ASSERT_EQ(saved.size(), 1u) << describe(r);
    EXPECT_LT(saved[0], steps);
    EXPECT_EQ(read_train_log(out_dir + "/log.jsonl").size(), static_cast<size_t>(saved[0]));
    EXPECT_NO_THROW(read_checkpoint(checkpoint_path(out_dir, saved[0])));
}

TEST_F(TrainerCli, NanStopIsOneLineAndExitOne) {
    const std::string out_dir = dir_ / "run";
    RunResult r = run({"train", "--config", config_file(out_dir, 10), "--set", "train.inject_nan_steps=[3,4]", "--set",
                       "train.max_bad_steps=2"});
    test::expect_error_line(r, 1, {"training diverged", "2 consecutive steps", "train.max_bad_steps = 2", "step-00000003.h5"});
    EXPECT_NE(r.out.find("step 3/10: loss is nan: step skipped"), std::string::npos) << r.out;
    EXPECT_EQ(checkpoint_steps(out_dir), (std::vector<int64_t>{1, 2, 3}));
}

TEST_F(TrainerCli, ResumeProblemsAreOneLine) {
    const std::string out_dir = dir_ / "run";
    const std::string config = config_file(out_dir, 2);
    RunResult first = run({"train", "--config", config});
    ASSERT_EQ(first.code, 0) << describe(first);
    EXPECT_EQ(first.err, "");
    test::expect_error_line(run({"train", "--config", config, "--resume", "--set", "model.topk=1", "--set", "model.train_topk=1"}),
                            2, {"resume", "model.topk: checkpoint 2, now 1"});
    test::expect_error_line(run({"train", "--config", config}), 2, {"already holds checkpoints", "--resume", "--overwrite"});
    test::expect_error_line(run({"train", "--config", config, "--resume", "--overwrite"}), 2, {"--resume", "--overwrite"});
    RunResult done = run({"train", "--config", config, "--resume"});
    EXPECT_EQ(done.code, 0) << describe(done);
    EXPECT_NE(done.out.find("already complete"), std::string::npos) << done.out;
    RunResult over = run({"train", "--config", config, "--overwrite"});
    EXPECT_EQ(over.code, 0) << describe(over);
}

// ============================================================================ generate

class TrainerGenerate : public TrainerCli {};

TEST_F(TrainerGenerate, GreedyDecodingIsDeterministicAndMatchesTheLibrary) {
    // A model with room for the byte tokenizer's 259 ids.
    const std::string out_dir = dir_ / "run";
    FullConfig config = tiny_run(out_dir, 2);
    config.model.vocab_size = 260;
    run_training(config, with_outputs());
    const std::string checkpoint = checkpoint_path(out_dir, 2);

    const std::string ids_prompt = dir_ / "prompt.ids";
    write_bytes(ids_prompt, "0 1 5 20\n 7 3");
    RunResult ids = run({"generate", "--ckpt", checkpoint, "--prompt-file", ids_prompt, "--max-new", "6", "--tokenizer", "ids"});
    ASSERT_EQ(ids.code, 0) << describe(ids);
    EXPECT_EQ(ids.err, "");
    std::unique_ptr<Model> model = load_model_from_checkpoint(checkpoint);
    GenerateOptions options;
    options.max_new = 6;
    const std::vector<int32_t> expected = greedy_generate(*model, {0, 1, 5, 20, 7, 3}, options);
    ASSERT_EQ(expected.size(), 6u);
    std::string expected_text;
    for (size_t i = 0; i < expected.size(); ++i) expected_text += (i ? " " : "") + std::to_string(expected[i]);
    EXPECT_EQ(ids.out, expected_text + "\n");
    for (int32_t id : expected) EXPECT_TRUE(id >= 0 && id < 260);

    const std::string text_prompt = dir_ / "prompt.txt";
    write_bytes(text_prompt, "The key is");
    RunResult a = run({"generate", "--ckpt", checkpoint, "--prompt-file", text_prompt, "--max-new", "5"});
    RunResult b = run({"generate", "--ckpt", checkpoint, "--prompt-file", text_prompt, "--max-new", "5", "--tokenizer", "byte"});
    ASSERT_EQ(a.code, 0) << describe(a);
    EXPECT_EQ(a.out, b.out);
    EXPECT_FALSE(a.out.empty());
    RunResult none = run({"generate", "--ckpt", checkpoint, "--prompt-file", text_prompt, "--max-new", "0"});
    EXPECT_EQ(none.out, "\n");
}

TEST_F(TrainerGenerate, BadInputsAreOneLine) {
    const std::string out_dir = dir_ / "run";
    run_training(tiny_run(out_dir, 1), with_outputs());  // vocabulary 64: too small for bytes
    const std::string checkpoint = checkpoint_path(out_dir, 1);
    const std::string prompt = dir_ / "prompt.txt";
    write_bytes(prompt, "hello");
    test::expect_error_line(run({"generate", "--prompt-file", prompt, "--max-new", "3"}), 2, {"--ckpt"});
    test::expect_error_line(run({"generate", "--ckpt", checkpoint, "--max-new", "3"}), 2, {"--prompt-file"});
    test::expect_error_line(run({"generate", "--ckpt", checkpoint, "--prompt-file", prompt}), 2, {"--max-new"});
    test::expect_error_line(run({"generate", "--ckpt", checkpoint, "--prompt-file", prompt, "--max-new", "x"}), 2, {"--max-new", "'x'"});
    test::expect_error_line(run({"generate", "--ckpt", checkpoint, "--prompt-file", prompt, "--max-new", "3"}), 2,
                            {"prompt token 104", "vocabulary of 64"});
    test::expect_error_line(run({"generate", "--ckpt", checkpoint, "--prompt-file", dir_ / "missing.txt", "--max-new", "3"}), 2,
                            {"missing.txt"});
    test::expect_error_line(run({"generate", "--ckpt", dir_ / "missing.h5", "--prompt-file", prompt, "--max-new", "3"}), 2,
                            {"missing.h5"});
    write_bytes(dir_ / "bad.ids", "1 2 x");
    test::expect_error_line(run({"generate", "--ckpt", checkpoint, "--prompt-file", dir_ / "bad.ids", "--max-new", "3",
                                 "--tokenizer", "ids"}),
                            2, {"'x'", "word 3"});
    write_bytes(dir_ / "garbage.h5", "garbage");
    test::expect_error_line(run({"generate", "--ckpt", dir_ / "garbage.h5", "--prompt-file", prompt, "--max-new", "3"}), 1,
                            {"garbage.h5"});
}


// ============================================================================ data sources

// Random byte-tokenizer text in one shard of `tokens` tokens: prefix-00000.h5.
std::string write_text_shard(const std::string& prefix, int64_t tokens) {
    ByteTokenizer byte;
    ShardWriterOptions options;
    options.prefix = prefix;
    options.format = shard_format_of(byte);
    ShardWriter writer(options);
    Rng rng(77);
    std::vector<int32_t> text;
    for (int64_t i = 0; i < tokens; ++i) text.push_back(static_cast<int32_t>(rng.next_int(32, 127)));
    writer.append(text);
    return writer.finish().at(0);
}

TEST(TrainerData, DataSectionDefaultsToTheRecallTaskAndRoundTrips) {
    const FullConfig c = FullConfig::from_json(default_train_config());
    EXPECT_TRUE(recall_only(c));
    EXPECT_NE(describe_data(c).find("recall task with 1 pairs"), std::string::npos) << describe_data(c);
    const Json j = c.to_json();
    ASSERT_TRUE(j.contains("data"));
    EXPECT_FALSE(j.at("data").contains("recall")) << "the recall task's settings are the task section";
    EXPECT_EQ(FullConfig::from_json(j).to_json().dump(), j.dump());

    // The default source is the recall task of the foundation trainer: same batches.
    std::unique_ptr<BatchSource> source = make_training_batch_source(c, false);
    const TrainBatch first = source->next();
    const RecallBatch expected = make_recall_batch(c.task, c.train.batch_size, c.train.seq_len, c.model.window, 1, 0);
    EXPECT_TRUE(same_tensor_bits(first.tokens, expected.tokens));
    EXPECT_TRUE(same_tensor_bits(first.mask, expected.mask));

    Json recall_in_data = default_train_config();
    apply_override(recall_in_data, "data.recall={\"pairs\": 2}");
    try {
        FullConfig::from_json(recall_in_data);
        ADD_FAILURE() << "data.recall accepted beside the task section";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("config data.recall"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("\"task\" section"), std::string::npos) << e.what();
    }
    Json unknown = default_train_config();
    apply_override(unknown, "data.shardz=[]");
    EXPECT_THROW(FullConfig::from_json(unknown), ConfigError);
    Json missing = default_train_config();
    apply_override(missing, "data.shards=[\"/nonexistent/x-*.h5\"]");
    apply_override(missing, "model.vocab_size=260");
    const FullConfig parsed = FullConfig::from_json(missing);  // files are checked when the sources are made
    EXPECT_THROW(make_training_batch_source(parsed, false), ConfigError);
}

// Text shards mixed with the recall task: the resumed run equals the uninterrupted one bit
// for bit (the mixture's draws, the text position and the recall batch index all restored).
// launch/configs/tiny.json spells out the defaults of `hsa train`.
TEST(TrainerData, TinyConfigFileIsTheDefaults) {
    const Json file = Json::parse(read_bytes(std::string(HSA_SOURCE_DIR) + "/launch/configs/tiny.json"));
    EXPECT_EQ(FullConfig::from_json(file).to_json().dump(2), FullConfig::from_json(default_train_config()).to_json().dump(2));
}

TEST(TrainerData, TextAndRecallMixtureResumesExactly) {
    test::TempFolder dir("hsa_trainer_test");
    write_text_shard(dir / "text", 8000);
    FullConfig config = tiny_run(dir / "run", 6);
    Json root = config.to_json();
    root["model"]["vocab_size"] = int64_t{260};
    Json shards = Json::array();
    shards.push_back(dir / "text-*.h5");
    root["data"]["shards"] = shards;
    root["data"]["held_out_fraction"] = 0.1;
    root["data"]["weights"] = Json::parse(R"({"text": 1, "tasks": 0, "recall": 1})");
    root["train"]["save_every"] = int64_t{3};
    root["train"]["eval_every"] = int64_t{3};
    root["train"]["grad_accum"] = int64_t{2};
    config = FullConfig::from_json(root);
    EXPECT_FALSE(recall_only(config));
    EXPECT_NE(describe_data(config).find("text from 1 shard pattern(s) (weight 1)"), std::string::npos) << describe_data(config);

    const TrainResult full = run_training(config, with_outputs());
    ASSERT_EQ(full.losses.size(), 6u);
    for (float loss : full.losses) EXPECT_TRUE(std::isfinite(loss));
    const Checkpoint last = read_checkpoint(checkpoint_path(dir / "run", 6));
    EXPECT_EQ(last.state.data_state.at("kind").as_string(), "mixture") << last.state.data_state.dump();

    fs::remove(checkpoint_path(dir / "run", 6));
    RunOptions resume = with_outputs();
    resume.resume = true;
    const TrainResult resumed = run_training(config, resume);
    ASSERT_EQ(resumed.losses.size(), 3u);
    for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(same_bits(resumed.losses[i], full.losses[3 + i])) << "step " << 4 + i;
    EXPECT_EQ(resumed.final_eval_loss, full.final_eval_loss);
    EXPECT_EQ(read_checkpoint(checkpoint_path(dir / "run", 6)).state.data_state.dump(), last.state.data_state.dump());

    // A different mixture is a different run: refused on resume, naming the field.
    FullConfig other = config;
    other.data.weights.recall = 2;
    try {
        run_training(other, resume);
        ADD_FAILURE() << "resumed with other data weights";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("data.weights.recall"), std::string::npos) << e.what();
    }
}

// ============================================================================ eval

// The table, JSON and accuracies aggregate the cells' scores as documented.
TEST(TrainerEval, TableAndJsonAggregateTheScores) {
    TaskEvalOptions options;
    options.task = "passkey";
    options.lengths = {4096, 8192};
    options.depths = {0.0, 1.0};
    options.samples = 2;
    TaskEvalResult result;
    const double scores[4][2] = {{1, 0}, {1, 1}, {0, 0}, {0.5, 0.5}};  // (4K, 0), (4K, 1), (8K, 0), (8K, 1)
    for (int c = 0; c < 4; ++c) {
        TaskEvalCell cell;
        cell.length = options.lengths[c / 2];
        cell.depth = options.depths[c % 2];
        for (double s : scores[c]) {
            cell.scores.push_back(s);
            cell.predictions.push_back("12345");
            cell.answers.push_back({"12345"});
            cell.example_lengths.push_back(cell.length);
        }
        result.cells.push_back(cell);
    }
    EXPECT_DOUBLE_EQ(result.accuracy(), 4.0 / 8.0);
    const std::string table = task_eval_table(result, options);
    EXPECT_NE(table.find("depth \\ length         4K       8K"), std::string::npos) << table;
    EXPECT_NE(table.find("0.00                0.500    0.000"), std::string::npos) << table;
    EXPECT_NE(table.find("1.00                1.000    0.500"), std::string::npos) << table;
    EXPECT_NE(table.find("mean                0.750    0.250"), std::string::npos) << table;
    EXPECT_NE(table.find("overall accuracy 0.500"), std::string::npos) << table;
    const Json j = task_eval_json(result, options, "c.h5", 7, "byte");
    EXPECT_EQ(j.at("accuracy_by_length").at("4096").as_number(), 0.75);
    EXPECT_EQ(j.at("accuracy_by_length").at("8192").as_number(), 0.25);
    ASSERT_EQ(j.at("cells").items().size(), 4u);
    EXPECT_EQ(j.at("cells").items()[3].at("accuracy").as_number(), 0.5);
    EXPECT_EQ(j.at("checkpoint_step").as_number(), 7.0);
    EXPECT_EQ(length_label(4096), "4K");
    EXPECT_EQ(length_label(300), "300");
    EXPECT_EQ(length_label(32 * 1024 * 1024), "32M");
}

TEST_F(TrainerGenerate, EvalWritesTableJsonAndHeatmapDeterministically) {
    const std::string out_dir = dir_ / "run";
    FullConfig config = tiny_run(out_dir, 1);
    config.model.vocab_size = 260;
    run_training(config, with_outputs());
    const std::string checkpoint = checkpoint_path(out_dir, 1);
    const std::vector<std::string> args = {"eval", "--ckpt", checkpoint, "--task", "passkey", "--lengths", "256,320",
                                           "--samples", "2", "--depths", "0,1", "--max-new", "3"};
    RunResult r = run(args);
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_EQ(r.err, "");
    EXPECT_NE(r.out.find("depth \\ length        256      320"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("overall accuracy"), std::string::npos) << r.out;
    const std::string json_path = out_dir + "/eval/eval_passkey.json";  // next to checkpoints/
    const std::string first = read_bytes(json_path);
    const Json j = Json::parse(first, json_path);
    EXPECT_EQ(j.at("task").as_string(), "passkey");
    EXPECT_EQ(j.at("lengths").dump(), "[256,320]");
    EXPECT_EQ(j.at("depths").dump(), "[0,1]");
    ASSERT_EQ(j.at("cells").items().size(), 4u);
    for (const Json& cell : j.at("cells").items()) {
        ASSERT_EQ(cell.at("scores").items().size(), 2u);
        for (const Json& s : cell.at("scores").items()) EXPECT_TRUE(s.as_number() >= 0 && s.as_number() <= 1);
        ASSERT_EQ(cell.at("answers").items().size(), 2u);
        EXPECT_EQ(cell.at("answers").items()[0].items()[0].as_string().size(), 5u) << "a 5-digit pass key";
        EXPECT_LE(std::fabs(cell.at("example_tokens").items()[0].as_number() - cell.at("length").as_number()), 64);
    }
    // The first example's prediction is the greedy continuation of its prompt, decoded.
    auto tokenizer = load_tokenizer("byte");
    TaskOptions task_options;
    task_options.length = 256;
    task_options.depth = 0;
    const TaskExample example = generate_task_example("passkey", *tokenizer, task_options, 0);
    std::unique_ptr<Model> model = load_model_from_checkpoint(checkpoint);
    GenerateOptions decode;
    decode.max_new = 3;
    decode.stop_id = tokenizer->eos_id();
    decode.vocab_limit = tokenizer->vocab_size();
    const std::vector<int32_t> prompt(example.tokens.begin(), example.tokens.begin() + example.prompt_length);
    const std::string prediction = tokenizer->decode(greedy_generate(*model, prompt, decode));
    const Json& first_cell = j.at("cells").items()[0];
    if (prediction.find_first_of("\x80\xff") == std::string::npos) {  // stored as is when valid UTF-8
        EXPECT_EQ(first_cell.at("predictions").items()[0].as_string(), prediction);
    }
    EXPECT_EQ(first_cell.at("scores").items()[0].as_number(), score_task("passkey", prediction, example.answers));
    if (gnuplot_available()) {
        EXPECT_EQ(read_bytes(out_dir + "/eval/eval_passkey.png").substr(0, 8), "\x89PNG\r\n\x1a\n");
    }

    RunResult again = run(args);
    ASSERT_EQ(again.code, 0) << describe(again);
    EXPECT_EQ(read_bytes(json_path), first) << "the same checkpoint and seed give the same results";

    test::expect_error_line(run({"eval", "--ckpt", checkpoint, "--task", "passkee", "--lengths", "256"}), 2,
                            {"unknown task 'passkee'", "passkey"});
    test::expect_error_line(run({"eval", "--ckpt", checkpoint, "--task", "passkey", "--lengths", "4X"}), 2, {"--lengths", "4X"});
    test::expect_error_line(run({"eval", "--ckpt", checkpoint, "--task", "passkey", "--lengths", "256", "--depths", "1.5"}), 2,
                            {"--depths", "1.5"});
    test::expect_error_line(run({"eval", "--ckpt", checkpoint, "--lengths", "256"}), 2, {"--task"});
    test::expect_error_line(run({"eval", "--ckpt", checkpoint, "--task", "passkey"}), 2, {"--lengths"});
}

}  // namespace
}  // namespace hsa
