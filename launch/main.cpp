// `hsa`: the one command-line entry point. Subcommands: info, train, bench, op, data.
// Errors in user input print one line on stderr and exit non-zero (2 for a bad config or
// bad arguments, 1 for failures while running).
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include "core/build_info.h"
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
  train    train a model (today: the built-in recall task, on the CPU or one GPU)
  bench    time the CUDA kernels against TARGETS.md (hsa bench hsa | swa | train)
  op       run one op forward + backward on HDF5 inputs (hsa op NAME --inputs IN.h5 --out OUT.h5)
  data     text to token ids and back, for scripts (hsa data encode|decode --tokenizer byte)

Run 'hsa <command> --help' for a command's options.
)";

const char* kTrainHelp = R"(usage: hsa train [--config FILE.json] [--set section.key=value ...] [--print-config]

Trains the SWA + HSA model of shared/design/MODEL.md on the built-in associative-recall
task: key-value pairs early in each sequence, queried at the end beyond the sliding
window, so only HSA retrieval can answer. Prints a progress line (loss, tokens/s, ETA)
and the held-out recall accuracy.

options:
  --config FILE     JSON with sections "model", "train", "task"; every field has a default
                    (see --print-config); unknown fields are errors
  --set K=V         override one field, e.g. --set model.residual=standard
                    --set model.train_topk=all --set train.steps=50 (repeatable)
  --print-config    print the resolved configuration as JSON and exit
  -h, --help        this text

model switches (ablations of the paper's three principles):
  model.encoder_layers  0 = no chunk encoder (needs model.cls=false)
  model.cls             false = landmark is the mean of the chunk's encoded tokens
  model.residual        "brp" (Bypassing Residual Path) | "standard"
  model.weights         "softmax" | "stickbreak"
  model.topk            K chunks per token; model.train_topk: a number or "all"
  model.retrieval_heads 1 or kv_heads;  model.qk_norm, model.retrieval_norm: true/false

exit codes: 0 success, 1 runtime failure, 2 bad arguments or configuration
)";

const char* kBenchHelp = R"(usage: hsa bench hsa | swa | train

Times CUDA kernels with CUDA events (median of repeats after warm-up) on random inputs:
  hsa   the HSA operator at the shapes of shared/design/TARGETS.md (H 16, Hk 1, S 64,
        K 8, random top-K chunks): forward and forward+backward ms, useful TFLOP/s,
        peak memory, beside the public Triton kernel's figures
  swa   sliding-window attention (window 512) at 8x4K and 1x64K, beside flex_attention
  train one training step of the paper-scale model (287.7M parameters, batch 8 x 4096):
        ms/step, tokens/s, MFU, peak memory and device time by backend method
Needs a GPU.
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

int run_train(const std::vector<std::string>& args) {
    Json root = default_train_config();
    std::vector<std::string> overrides;
    bool print_config = false;
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
        } else {
            throw UsageError("train: unknown option '" + a + "' (see hsa train --help)");
        }
    }
    for (const auto& o : overrides) apply_override(root, o);
    FullConfig config = FullConfig::from_json(root);
    if (print_config) {
        std::cout << config.to_json().dump(2) << "\n";
        return 0;
    }
    TrainResult result = train_recall(config, &std::cout);
    std::cout << std::fixed << std::setprecision(3) << "final: loss " << result.losses.back() << ", held-out recall accuracy "
              << result.final_accuracy << " (chance " << 1.0 / static_cast<double>(config.task.values) << "), "
              << std::setprecision(0) << result.tokens_per_second << " tokens/s\n";
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
                throw UsageError("unknown command '" + command + "' (commands: info, train, bench, op, data; see hsa --help)");
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
