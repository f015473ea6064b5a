// Model configuration (shared/design/MODEL.md "Sizes and names"), read from the "model"
// section of a JSON config. Every field has a default; unknown fields and wrong types are
// errors (ConfigError, which the CLI turns into one line and exit code 2).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/tensor.h"

namespace hsa {

struct ConfigError : Error {
    explicit ConfigError(const std::string& message) : Error(message) {}
};

enum class ResidualMode { Brp, Standard };

// The defaults are the tiny model that trains on a CPU in about a minute (`hsa train` with
// no config); launch/configs/paper_scale.json and paper_scale_model_config() hold the
// paper-scale model of TARGETS.md.
struct ModelConfig {
    int64_t vocab_size = 64;       // V
    int64_t hidden = 64;           // D
    int64_t heads = 4;             // H
    int64_t kv_heads = 1;          // Hk
    int64_t mlp_hidden = 128;      // F; 0 = 8/3 D rounded up to a multiple of 64
    int64_t window = 8;            // W
    int64_t chunk_size = 8;        // S
    int64_t topk = 2;              // K at evaluation (and in training unless train_topk says otherwise)
    int64_t train_topk = 0;        // 0 = same as topk; -1 = "all" (every visible chunk)
    int64_t retrieval_dim = 32;    // Dr; 0 = D
    int64_t retrieval_heads = 1;   // Hr: 1 or Hk
    int64_t encoder_layers = 1;    // E; 0 = no encoder (z = RMSNorm(h))
    int64_t lower_layers = 1;      // Llo
    int64_t upper_groups = 1;      // Gup
    int64_t upper_layers = 1;      // U, SWA layers per upper group
    bool cls = true;               // CLS landmark; false = mean-pooled landmark
    ResidualMode residual = ResidualMode::Brp;
    bool stickbreak = false;       // weights: false = softmax, true = stick-breaking
    bool qk_norm = true;           // per-head RMSNorm on q and k (SWA, encoder, HSA q)
    bool retrieval_norm = true;    // RMSNorm on qr and on landmarks
    bool tie_embeddings = false;
    float rope_base = 10000.0f;
    float norm_eps = 1e-6f;
    float init_std = 0.02f;

    int64_t head_dim() const { return hidden / heads; }
    int64_t mlp_size() const { return mlp_hidden > 0 ? mlp_hidden : ((8 * hidden / 3 + 63) / 64) * 64; }
    int64_t retrieval_size() const { return retrieval_dim > 0 ? retrieval_dim : hidden; }
    int64_t retrieval_head_dim() const { return retrieval_size() / retrieval_heads; }
    int64_t depth() const { return lower_layers + upper_groups * (1 + upper_layers); }
    // K used for a forward pass: training may select every visible chunk (ablation).
    int64_t selection_k(bool training, int64_t num_chunks) const;

    // Throws ConfigError on the first invalid value, naming it and what was expected.
    void validate() const;
    static ModelConfig from_json(const Json& section);  // applies defaults, validates
    Json to_json() const;
};

// The paper-scale model of TARGETS.md (V 50304, D 1024, H 16, Hk 1, F 2752, W 512, S 64,
// K 8, Dr 1024, E 1, Llo 8, Gup 2, U 3, untied head: 287.7M parameters), validated; the
// "model" section of launch/configs/paper_scale.json holds the same (a test checks).
ModelConfig paper_scale_model_config();

// Typed access to one JSON object with defaults; finish() rejects unknown fields.
class ConfigReader {
public:
    ConfigReader(const Json& object, std::string section);
    void read(const char* key, int64_t& value);
    void read(const char* key, float& value);
    void read(const char* key, double& value);
    void read(const char* key, bool& value);
    void read(const char* key, std::string& value);
    const Json* raw(const char* key);  // marks the field used; nullptr when absent
    void finish() const;
    [[noreturn]] void fail(const std::string& key, const std::string& what) const;

private:
    const Json& object_;
    std::string section_;
    std::vector<std::string> used_;
};

// Applies "section.key=value" overrides (value parsed as JSON, else taken as a string).
void apply_override(Json& config, const std::string& assignment);

}  // namespace hsa
