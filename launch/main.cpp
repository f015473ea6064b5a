// `hsa`: the one command-line entry point. Subcommands: info, train, generate, eval, bench, op, data.
// Errors in user input print one line on stderr and exit non-zero (2 for a bad config or
// bad arguments, 1 for failures while running).
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/build_info.h"
#include "core/cuda_allocator.h"
#include "core/json.h"
#include "core/model/config.h"
#include "core/model/model.h"
#include "dist/mpi_context.h"
#include "launch/data_command.h"
#include "launch/op_runner.h"
#ifdef HSA_WITH_CUDA_KERNELS
#include "kernels/cuda_backend.h"
#endif
#include "trainers/bench.h"
#include "trainers/evaluate.h"
#include "trainers/generate.h"
#include "trainers/plot.h"
#include "trainers/tasks/task.h"
#include "trainers/tokenizer.h"
#include "trainers/train_log.h"
#include "trainers/trainer.h"

namespace {

using namespace hsa;

struct UsageError : Error {
    explicit UsageError(const std::string& message) : Error(message) {}
};

const char* kMainHelp = R"(hsa: train and evaluate long-context language models with Hierarchical Sparse Attention

usage: hsa <command> [options]

commands:
  info     build flags, library versions (CUDA runtime/driver, NCCL, cuDNN, MPI, HDF5) and visible GPUs
  train    train a model on text shards, task examples or the built-in recall task (CPU or one
           GPU), with checkpoints, exact resume (--resume), log.jsonl and loss plots in train.out_dir
  generate greedy continuation of a prompt by a checkpoint (hsa generate --ckpt F --prompt-file P)
  eval     accuracy of a checkpoint on a RULER/BABILong-style task by context length and needle
           depth: a table, JSON and a heatmap PNG (hsa eval --ckpt F --task passkey --lengths 4K,8K)
  bench    time the CUDA kernels against TARGETS.md (hsa bench hsa | swa | train)
  op       run one op forward + backward on HDF5 inputs (hsa op NAME --inputs IN.h5 --out OUT.h5)
  data     tokenizers (encode|decode), HDF5 token shards (tokenize|inspect), RULER/BABILong-style
           task data (task), the installed prose corpus (corpus): hsa data --help

Run 'hsa <command> --help' for a command's options.
)";

const char* kTrainHelp = R"(usage: hsa train [--config FILE.json] [--set section.key=value ...] [--resume | --overwrite]
                 [--print-config]

Trains the SWA + HSA model of shared/design/MODEL.md on the data of the "data" section:
tokenised text shards (hsa data tokenize), RULER/BABILong-style task examples, the
built-in associative-recall task, or a weighted mixture. The default is the recall task
alone: key-value pairs early in each sequence, queried at the end beyond the sliding
window, so only HSA retrieval can answer. Prints a progress line (loss, tokens/s, ETA)
and the held-out accuracy (at the answer positions; for text, of every next token).

options:
  --config FILE     JSON with sections "model", "train", "task" (the recall task's settings)
                    and "data"; every field has a default (see --print-config); unknown
                    fields are errors
  --set K=V         override one field, e.g. --set model.residual=standard
                    --set model.train_topk=all --set train.steps=50 (repeatable)
  --resume          continue from the newest complete checkpoint in train.out_dir, with the
                    same data position, optimizer state and losses (bit for bit on the CPU)
                    as a run that never stopped; a damaged newest checkpoint is skipped with
                    a warning. No checkpoint there: starts at step 0, saying so (so one
                    command line serves a first launch and every restart). Only out_dir,
                    save_every, keep_checkpoints, log_every, eval_every, eval_batches and
                    max_bad_steps may differ from the checkpoint's configuration.
  --overwrite       start over in a train.out_dir that holds an earlier run's checkpoints
                    (deletes them); without --resume or --overwrite such a folder is an error
  --print-config    print the resolved configuration as JSON and exit
  -h, --help        this text

the run's folder, train.out_dir (default runs/tiny):
  config.json       the resolved configuration
  log.jsonl         one JSON object per step: step, loss, lr, grad_norm, tokens_per_s,
                    tokens_seen, peak_memory_bytes (peak RSS on CPU, allocator peak on GPU),
                    eval_loss and eval_accuracy on evaluation steps, skipped on skipped steps
  loss.png, accuracy.png   curves drawn with gnuplot (a warning, and no PNG, without it)
  checkpoints/step-00000100.h5   HDF5: /params/<name>, /optim/<name>/{m,v}, attributes with
                    the config, step, tokens seen, data position and checksums; written to a
                    temporary file and renamed, so a crash never leaves a half checkpoint

train fields (besides model and optimizer settings; see --print-config):
  train.steps, batch_size (per micro-batch), grad_accum (micro-batches per step), seq_len
  train.save_every  checkpoint every N steps (0 = only at the end)
  train.keep_checkpoints   keep the newest N (0 = all)
  train.eval_every, eval_batches   held-out evaluation (eval_every 0 = only at the end)
  train.max_bad_steps   a step whose loss or gradient is NaN/Inf is skipped (no update);
                    this many in a row stop the run (exit 1), keeping its checkpoints
  train.inject_nan_steps   testing aid: steps (1-based) whose loss is treated as NaN
  Ctrl-C or SIGTERM: the current step finishes, a checkpoint is written, exit 1.

data fields (trainers/data_sources.h):
  data.shards, data.held_out_shards   token shard paths or globs; data.held_out_fraction
  data.tasks, data.task_lengths       task names (hsa data task list) and example lengths
  data.weights {"text", "tasks", "recall"}   mixture weights (default: what is listed, else recall)
  data.tokenizer, data.haystack_file, data.shuffle

model switches (ablations of the paper's three principles):
  model.encoder_layers  0 = no chunk encoder (needs model.cls=false)
  model.cls             false = landmark is the mean of the chunk's encoded tokens
  model.residual        "brp" (Bypassing Residual Path) | "standard"
  model.weights         "softmax" | "stickbreak"
  model.topk            K chunks per token; model.train_topk: a number or "all"
  model.retrieval_heads 1 or kv_heads;  model.qk_norm, model.retrieval_norm: true/false

exit codes: 0 success, 1 runtime failure (divergence, interruption, unreadable checkpoints),
2 bad arguments or configuration (including a resume whose configuration does not match)
)";

const char* kGenerateHelp = R"(usage: hsa generate --ckpt FILE.h5 --prompt-file FILE --max-new N [--tokenizer byte|ids|PATH]
                    [--device cpu|cuda]

Greedy decoding: loads the model of a training checkpoint, encodes the prompt and appends,
N times, the most likely next token (stopping early at the tokenizer's end-of-text token),
then prints the continuation (without the prompt) and a newline on stdout.
Each new token recomputes the whole sequence (no key/value cache yet): fine for checks
and short answers, slow for long continuations. The same inputs give the same output.

options:
  --ckpt FILE       a checkpoint written by hsa train (train.out_dir/checkpoints/step-*.h5)
  --prompt-file F   the prompt: the file's bytes exactly (a final newline is part of it)
  --max-new N       tokens to generate at most (N >= 0)
  --tokenizer T     byte (default): one token per byte; ids: the prompt file holds token
                    ids separated by white space and the output is ids too (for models of
                    synthetic tasks such as the recall task); or the path of a Hugging Face
                    tokenizer.json. Ids the tokenizer cannot decode are never chosen.
  --device D        cpu (default) or cuda
  -h, --help        this text

exit codes: 0 success, 1 runtime failure (e.g. a damaged checkpoint), 2 bad arguments
)";

const char* kEvalHelp = R"(usage: hsa eval --ckpt FILE.h5 --task NAME --lengths L1,L2,... [--samples N] [--depths D1,D2,...]
                [--tokenizer byte|PATH] [--max-new N] [--seed S] [--haystack FILE]
                [--option KEY=VALUE ...] [--out DIR] [--device cpu|cuda]

Scores a checkpoint on a RULER-style (niah_*, vt, cwe, fwe, passkey) or BABILong-style
(qa1..qa5) task: for every (length, depth) cell, --samples examples are generated
(hsa data task list shows the tasks), each prompt is decoded greedily and the
continuation is scored with the task's rule. --task recall scores the built-in
associative-recall task (its settings from the checkpoint's "task" section) at each
length instead: the fraction of answer positions whose arg-max is the value, with the
pairs further from the queries as the length grows (one forward pass per sequence).
Prints the accuracy table (rows: depth,
columns: length) and writes DIR/eval_NAME.json (options, every prediction and score,
accuracy per cell and per length) and DIR/eval_NAME.png (a length x depth heatmap, drawn
by gnuplot; without gnuplot a warning and no PNG). Decoding recomputes the whole
sequence for each new token (no key/value cache yet): long lengths are slow on a CPU.

options:
  --ckpt FILE       a checkpoint written by hsa train
  --task NAME       the task (hsa data task list), or recall
  --lengths L,...   target example lengths in tokens; K (x1024) and M suffixes: 4K,8K,16K
  --samples N       examples per cell (default 10)
  --depths D,...    needle depths in [0, 1] (niah_*, passkey); default one row of random depths
  --tokenizer T     byte (default) or the path of a Hugging Face tokenizer.json: the one
                    the model was trained with
  --max-new N       tokens decoded per example (default: the reference answer's length + 8;
                    decoding stops early at end-of-text)
  --seed S          example seed (default 1): the same seed gives the same examples
  --haystack FILE   prose haystack text instead of the installed corpus
  --option K=V      a task setting, e.g. num_hops=6 for vt (repeatable); for recall, a field
                    of the checkpoint's task section, e.g. answers_in_queries=false (no
                    answer fed back: every answer needs the far pair's chunk)
  --out DIR         where the JSON and PNG go (default: the run folder's eval/, i.e. next to
                    the checkpoints/ folder holding --ckpt)
  --device D        cpu (default) or cuda
  -h, --help        this text

exit codes: 0 success, 1 runtime failure (e.g. a damaged checkpoint), 2 bad arguments
)";

const char* kBenchHelp = R"(usage: hsa bench hsa | swa [--shape NxL[xd]] [--kv-heads N] | gemm | train

Times CUDA kernels with CUDA events (median of repeats after warm-up) on random inputs:
  hsa   the HSA operator at the shapes of shared/design/TARGETS.md (H 16, Hk 1, S 64,
        K 8, random top-K chunks): forward and forward+backward ms, useful TFLOP/s,
        peak memory, beside the public Triton kernel's figures
  swa   sliding-window attention (window 512, 16 q heads) at 8x4K and 1x64K, beside
        flex_attention; --kv-heads 1|2|4|8|16 (default 16, flex's MHA runs; the model has 1)
  gemm  the bf16 products of a paper-scale training step (cuBLASLt), ms and TFLOP/s each,
        with grouped alternatives for the MLP's products
  train one training step of the paper-scale model (287.7M parameters, batch 8 x 4096):
        ms/step, tokens/s, MFU, peak memory and device time by backend method
--shape NxL or NxLxd (e.g. 8x4096x64) keeps only the matching rows of hsa / swa, e.g. to
profile one shape under Nsight Compute. Needs a GPU.
)";

const char* kInfoHelp = R"(usage: hsa info

Prints the build flags, the versions of the CUDA runtime and driver, NCCL, cuDNN,
cuBLASLt, MPI and HDF5 this binary uses, and the visible GPUs (or "no GPU: CPU backend").
)";

int run_info() {
    std::cout << "hsa " << "0.1.0\n";
    std::cout << "build:          " << build_flags() << "\n";
    std::cout << "CUDA runtime:   " << cuda_runtime_version() << "\n";
    std::cout << "CUDA driver:    " << cuda_driver_version() << "\n";
    std::cout << "cuBLASLt:       " << cublaslt_version() << "\n";
    std::cout << "cuDNN:          " << cudnn_version() << "\n";
    std::cout << "NCCL:           " << nccl_version() << "\n";
    std::cout << "MPI:            " << mpi_library_version() << "\n";
    std::cout << "HDF5:           " << hdf5_version() << "\n";
    std::cout << "CPU threads:    " << openmp_threads() << " (OpenMP)\n";
    auto gpus = visible_gpus();
    if (gpus.empty()) {
        std::cout << "GPUs:           no GPU: CPU backend\n";
    } else {
        std::cout << "GPUs:           " << gpus.size() << " visible\n";
        for (const auto& g : gpus)
            std::cout << "  [" << g.index << "] " << g.name << ", compute capability " << g.major << "." << g.minor << ", "
                      << std::fixed << std::setprecision(1) << g.memory_gib << " GiB, " << g.multiprocessors << " SMs\n";
    }
    return 0;
}

// Set by SIGINT/SIGTERM during `hsa train`: the loop finishes its step, writes a checkpoint
// and stops. SA_RESETHAND makes a second signal act as usual (terminate at once).
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void request_training_stop(int signal) { g_stop_signal = signal; }

void install_stop_handlers() {
    struct sigaction action {};
    action.sa_handler = request_training_stop;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESETHAND | SA_RESTART;  // interrupted writes resume rather than fail
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
}

int run_train(const std::vector<std::string>& args) {
    Json root = default_train_config();
    std::vector<std::string> overrides;
    bool print_config = false;
    RunOptions options;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help") {
            std::cout << kTrainHelp;
            return 0;
        } else if (a == "--config") {
            if (i + 1 >= args.size()) throw UsageError("--config needs a file name");
            const std::string path = args[++i];
            try {
                root = Json::parse(read_text_file(path), path);
            } catch (const ConfigError&) {
                throw;
            } catch (const Error& e) {  // unreadable or malformed file: a configuration error
                throw ConfigError(e.what());
            }
        } else if (a == "--set") {
            if (i + 1 >= args.size()) throw UsageError("--set needs section.key=value");
            overrides.push_back(args[++i]);
        } else if (a == "--print-config") {
            print_config = true;
        } else if (a == "--resume") {
            options.resume = true;
        } else if (a == "--overwrite") {
            options.overwrite = true;
        } else {
            throw UsageError("train: unknown option '" + a + "' (see hsa train --help)");
        }
    }
    if (options.resume && options.overwrite)
        throw UsageError("train: --resume and --overwrite exclude each other (continue the run, or start it over)");
    for (const auto& o : overrides) apply_override(root, o);
    FullConfig config = FullConfig::from_json(root);
    if (print_config) {
        std::cout << config.to_json().dump(2) << "\n";
        return 0;
    }
    options.progress = &std::cout;
    options.stop_requested = &g_stop_signal;
    install_stop_handlers();
    TrainResult result = run_training(config, options);
    if (!result.losses.empty()) {
        std::cout << std::fixed << std::setprecision(3) << "final: loss " << result.losses.back();
        if (recall_only(config))
            std::cout << ", held-out recall accuracy " << result.final_accuracy << " (chance "
                      << 1.0 / static_cast<double>(config.task.values) << ")";
        else
            std::cout << ", held-out loss " << result.final_eval_loss << ", answer accuracy " << result.final_accuracy;
        std::cout << ", " << std::setprecision(0) << result.tokens_per_second << " tokens/s\n";
    }
    std::cout << "outputs: " << config.train.out_dir << " (log.jsonl, config.json, loss.png, checkpoints/";
    if (!result.last_checkpoint.empty()) std::cout << "; newest " << result.last_checkpoint;
    std::cout << ")\n";
    return 0;
}

// The prompt as token ids: white-space separated integers.
std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& source) {
    std::vector<int32_t> ids;
    std::istringstream in(text);
    for (std::string word; in >> word;) {
        char* end = nullptr;
        errno = 0;
        const long long value = std::strtoll(word.c_str(), &end, 10);
        if (*end != '\0' || errno != 0 || value < 0 || value > 2147483647LL)
            throw ConfigError(source + ": '" + word + "' (word " + std::to_string(ids.size() + 1) +
                              ") is not a token id (a whole number >= 0)");
        ids.push_back(static_cast<int32_t>(value));
    }
    return ids;
}

// A whole number >= minimum for `option`, else a one-line usage error.
int64_t parse_count_option(const std::string& text, const std::string& option, int64_t minimum) {
    char* end = nullptr;
    errno = 0;
    const long long n = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno != 0 || n < minimum)
        throw UsageError(option + ": expected a whole number >= " + std::to_string(minimum) + ", got '" + text + "'");
    return n;
}

int run_generate(const std::vector<std::string>& args) {
    std::string checkpoint, prompt_file, tokenizer_spec = "byte", device = "cpu";
    int64_t max_new = -1;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&](const char* what) -> std::string {
            if (i + 1 >= args.size()) throw UsageError(a + " needs " + what);
            return args[++i];
        };
        if (a == "-h" || a == "--help") {
            std::cout << kGenerateHelp;
            return 0;
        } else if (a == "--ckpt") {
            checkpoint = value("a checkpoint file");
        } else if (a == "--prompt-file") {
            prompt_file = value("a file name");
        } else if (a == "--max-new") {
            max_new = parse_count_option(value("a number of tokens"), "--max-new", 0);
        } else if (a == "--tokenizer") {
            tokenizer_spec = value("byte, ids or the path of a tokenizer.json");
        } else if (a == "--device") {
            device = value("cpu or cuda");
            if (device != "cpu" && device != "cuda") throw UsageError("--device: expected cpu or cuda, got '" + device + "'");
        } else {
            throw UsageError("generate: unknown option '" + a + "' (see hsa generate --help)");
        }
    }
    if (checkpoint.empty()) throw UsageError("generate: --ckpt is required (see hsa generate --help)");
    if (prompt_file.empty()) throw UsageError("generate: --prompt-file is required (see hsa generate --help)");
    if (max_new < 0) throw UsageError("generate: --max-new is required (see hsa generate --help)");
    if (device == "cuda" && !cuda_available()) throw UsageError("--device cuda: no GPU is visible (or this build has no CUDA)");
    std::error_code missing;
    if (!std::filesystem::is_regular_file(checkpoint, missing))
        throw ConfigError("generate: --ckpt '" + checkpoint + "': no such checkpoint file");

    std::string prompt_text;
    try {
        prompt_text = read_text_file(prompt_file);
    } catch (const Error& e) {
        throw ConfigError(e.what());
    }
    std::unique_ptr<Tokenizer> tokenizer;
    if (tokenizer_spec != "ids") tokenizer = load_tokenizer(tokenizer_spec);
    std::unique_ptr<Model> model = load_model_from_checkpoint(checkpoint, device == "cuda" ? Device::CUDA : Device::CPU);
    const std::vector<int32_t> prompt = tokenizer ? tokenizer->encode(prompt_text) : parse_token_ids(prompt_text, prompt_file);
    if (prompt.empty()) throw ConfigError("generate: the prompt file '" + prompt_file + "' holds no tokens");
    const int64_t vocab = model->config().vocab_size;
    for (size_t i = 0; i < prompt.size(); ++i)
        if (prompt[i] >= vocab)
            throw ConfigError("generate: prompt token " + std::to_string(prompt[i]) + " at position " + std::to_string(i) +
                              " is outside the model's vocabulary of " + std::to_string(vocab) + " ids (tokenizer '" +
                              tokenizer_spec + "'; the checkpoint was trained on other token ids)");
    GenerateOptions options;
    options.max_new = max_new;
    if (tokenizer) {
        options.stop_id = tokenizer->eos_id();
        options.vocab_limit = tokenizer->vocab_size();
    }
    const std::vector<int32_t> continuation = greedy_generate(*model, prompt, options);
    if (tokenizer) {
        std::cout << tokenizer->decode(continuation) << "\n";
    } else {
        for (size_t i = 0; i < continuation.size(); ++i) std::cout << (i ? " " : "") << continuation[i];
        std::cout << "\n";
    }
    return 0;
}

// "a,b,c" -> {"a", "b", "c"}; empty items are an error.
std::vector<std::string> split_list(const std::string& text, const std::string& option) {
    std::vector<std::string> items;
    std::string item;
    std::istringstream in(text);
    while (std::getline(in, item, ',')) {
        if (item.empty()) throw UsageError(option + ": empty item in '" + text + "'");
        items.push_back(item);
    }
    if (items.empty()) throw UsageError(option + ": expected a comma-separated list, got '" + text + "'");
    return items;
}


int run_eval(const std::vector<std::string>& args) {
    std::string checkpoint, tokenizer_spec = "byte", device = "cpu", out_dir;
    TaskEvalOptions options;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&](const char* what) -> std::string {
            if (i + 1 >= args.size()) throw UsageError(a + " needs " + what);
            return args[++i];
        };
        if (a == "-h" || a == "--help") {
            std::cout << kEvalHelp;
            return 0;
        } else if (a == "--ckpt") {
            checkpoint = value("a checkpoint file");
        } else if (a == "--task") {
            options.task = value("a task name");
        } else if (a == "--lengths") {
            for (const auto& item : split_list(value("lengths, e.g. 4K,8K"), "--lengths")) {
                try {
                    options.lengths.push_back(parse_token_count(item));
                } catch (const Error& e) {
                    throw UsageError(std::string("--lengths: ") + e.what());
                }
            }
        } else if (a == "--depths") {
            for (const auto& item : split_list(value("depths, e.g. 0,0.5,1"), "--depths")) {
                char* end = nullptr;
                const double depth = std::strtod(item.c_str(), &end);
                if (*end != '\0' || !(depth >= 0 && depth <= 1))
                    throw UsageError("--depths: '" + item + "' is not a depth in [0, 1]");
                options.depths.push_back(depth);
            }
        } else if (a == "--samples") {
            options.samples = parse_count_option(value("a number"), "--samples", 1);
        } else if (a == "--max-new") {
            options.max_new = parse_count_option(value("a number of tokens"), "--max-new", 1);
        } else if (a == "--seed") {
            options.seed = static_cast<uint64_t>(parse_count_option(value("a number"), "--seed", 0));
        } else if (a == "--tokenizer") {
            tokenizer_spec = value("byte or the path of a tokenizer.json");
        } else if (a == "--haystack") {
            options.haystack_file = value("a text file");
        } else if (a == "--option") {
            const std::string text = value("KEY=VALUE");
            const size_t eq = text.find('=');
            if (eq == std::string::npos || eq == 0) throw UsageError("--option: '" + text + "' is not KEY=VALUE");
            Json parsed;
            try {
                parsed = Json::parse(text.substr(eq + 1), "--option");
            } catch (const Error&) {
                parsed = Json(text.substr(eq + 1));  // not JSON: a string
            }
            options.extra[text.substr(0, eq)] = parsed;
        } else if (a == "--out") {
            out_dir = value("a folder");
        } else if (a == "--device") {
            device = value("cpu or cuda");
            if (device != "cpu" && device != "cuda") throw UsageError("--device: expected cpu or cuda, got '" + device + "'");
        } else {
            throw UsageError("eval: unknown option '" + a + "' (see hsa eval --help)");
        }
    }
    if (checkpoint.empty()) throw UsageError("eval: --ckpt is required (see hsa eval --help)");
    if (options.task.empty()) throw UsageError("eval: --task is required (hsa data task list shows the tasks)");
    if (options.lengths.empty()) throw UsageError("eval: --lengths is required, e.g. --lengths 4K,8K");
    options.validate();
    if (device == "cuda" && !cuda_available()) throw UsageError("--device cuda: no GPU is visible (or this build has no CUDA)");
    std::error_code missing;
    if (!std::filesystem::is_regular_file(checkpoint, missing))
        throw ConfigError("eval: --ckpt '" + checkpoint + "': no such checkpoint file");
    if (out_dir.empty()) {
        const std::filesystem::path folder = std::filesystem::path(checkpoint).parent_path();
        out_dir = ((folder.filename() == "checkpoints" ? folder.parent_path() : folder) / "eval").string();
        if (out_dir.empty()) out_dir = "eval";
    }
    std::filesystem::create_directories(out_dir, missing);
    if (missing) throw ConfigError("eval: --out: cannot create '" + out_dir + "': " + missing.message());

    const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(tokenizer_spec);
    CheckpointState state;
    std::unique_ptr<Model> model = load_model_from_checkpoint(checkpoint, device == "cuda" ? Device::CUDA : Device::CPU, &state);
    std::cout << "eval: " << checkpoint << " (step " << state.step << "), task " << options.task << ", tokenizer "
              << tokenizer->name() << "\n";
    const TaskEvalResult result =
        options.task == kRecallTaskName
            ? evaluate_recall_lengths(*model, FullConfig::from_json(state.config).task, options, &std::cout)
            : evaluate_task(*model, *tokenizer, options, &std::cout);
    std::cout << task_eval_table(result, options);
    const std::string json_path = out_dir + "/eval_" + options.task + ".json";
    const std::string png_path = out_dir + "/eval_" + options.task + ".png";
    write_file_atomically(json_path, task_eval_json(result, options, checkpoint, state.step, tokenizer->name()).dump(2) + "\n");
    std::cout << "results: " << json_path;
    if (!gnuplot_available()) {
        std::cout << "\nwarning: gnuplot not found: no heatmap (install gnuplot-nox, see launch/setup.sh)\n";
        return 0;
    }
    try {
        plot_task_eval(result, options, png_path);
        std::cout << ", " << png_path << "\n";
    } catch (const Error& e) {
        std::cout << "\nwarning: " << e.what() << "\n";
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    DistContext dist;
    int code = 0;
    try {
        dist = init_distributed(&argc, &argv);
#ifdef HSA_WITH_CUDA_KERNELS
        register_cuda_backend();
#endif
        std::vector<std::string> args(argv + 1, argv + argc);
        if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
            std::cout << kMainHelp;
            code = args.empty() ? 2 : 0;
        } else {
            const std::string command = args[0];
            std::vector<std::string> rest(args.begin() + 1, args.end());
            if (command == "info") {
                if (!rest.empty() && (rest[0] == "-h" || rest[0] == "--help")) std::cout << kInfoHelp;
                else if (!rest.empty()) throw UsageError("info: unknown option '" + rest[0] + "'");
                else code = run_info();
            } else if (command == "train") {
                code = run_train(rest);
            } else if (command == "generate") {
                code = run_generate(rest);
            } else if (command == "eval") {
                code = run_eval(rest);
            } else if (command == "bench") {
                if (rest.empty() || rest[0] == "-h" || rest[0] == "--help") {
                    std::cout << kBenchHelp;
                    code = rest.empty() ? 2 : 0;
                } else {
                    code = run_bench(rest[0], std::vector<std::string>(rest.begin() + 1, rest.end()), std::cout);
                }
            } else if (command == "op") {
                if (rest.empty()) {
                    std::cout << op_help();
                    code = 2;
                } else {
                    code = run_op(rest, std::cout);
                }
            } else if (command == "data") {
                code = run_data(rest, std::cin, std::cout);
            } else {
                throw UsageError("unknown command '" + command + "' (commands: info, train, generate, eval, bench, op, data; see hsa --help)");
            }
        }
    } catch (const ConfigError& e) {
        std::cerr << "hsa: error: " << e.what() << "\n";
        code = 2;
    } catch (const UsageError& e) {
        std::cerr << "hsa: error: " << e.what() << "\n";
        code = 2;
    } catch (const std::exception& e) {
        std::cerr << "hsa: error: " << e.what() << "\n";
        code = 1;
    }
    finalize_distributed(dist);
    return code;
}
