#include "core/model/config.h"

#include <algorithm>
#include <cmath>

namespace hsa {

ConfigReader::ConfigReader(const Json& object, std::string section) : object_(object), section_(std::move(section)) {
    if (!object_.is_object())
        throw ConfigError("config " + section_ + ": expected an object, got " + object_.kind_name());
}

void ConfigReader::fail(const std::string& key, const std::string& what) const {
    throw ConfigError("config " + section_ + "." + key + ": " + what);
}

const Json* ConfigReader::raw(const char* key) {
    used_.push_back(key);
    return object_.contains(key) ? &object_.at(key) : nullptr;
}

void ConfigReader::read(const char* key, int64_t& value) {
    const Json* j = raw(key);
    if (!j) return;
    if (!j->is_number() || j->as_number() != std::floor(j->as_number()) || std::fabs(j->as_number()) > 9e15)
        fail(key, std::string("expected an integer, got ") + (j->is_number() ? j->dump() : j->kind_name()));
    value = static_cast<int64_t>(j->as_number());
}

void ConfigReader::read(const char* key, float& value) {
    double d = value;
    read(key, d);
    value = static_cast<float>(d);
}

void ConfigReader::read(const char* key, double& value) {
    const Json* j = raw(key);
    if (!j) return;
    if (!j->is_number()) fail(key, std::string("expected a number, got ") + j->kind_name());
    value = j->as_number();
}

void ConfigReader::read(const char* key, bool& value) {
    const Json* j = raw(key);
    if (!j) return;
    if (!j->is_bool()) fail(key, std::string("expected true or false, got ") + (j->is_string() ? "\"" + j->as_string() + "\"" : j->kind_name()));
    value = j->as_bool();
}

void ConfigReader::read(const char* key, std::string& value) {
    const Json* j = raw(key);
    if (!j) return;
    if (!j->is_string()) fail(key, std::string("expected a string, got ") + j->kind_name());
    value = j->as_string();
}

void ConfigReader::finish() const {
    for (const auto& [key, value] : object_.fields()) {
        if (std::find(used_.begin(), used_.end(), key) == used_.end()) {
            std::string known;
            for (const auto& k : used_) known += (known.empty() ? "" : ", ") + k;
            throw ConfigError("config " + section_ + ": unknown field \"" + key + "\" (known: " + known + ")");
        }
    }
}

int64_t ModelConfig::selection_k(bool training, int64_t num_chunks) const {
    if (training && train_topk == -1) return std::max<int64_t>(1, num_chunks);
    if (training && train_topk > 0) return train_topk;
    return topk;
}

void ModelConfig::validate() const {
    auto bad = [](const std::string& key, const std::string& what) { throw ConfigError("config model." + key + ": " + what); };
    auto positive = [&](const char* key, int64_t v) {
        if (v < 1) bad(key, "must be >= 1, got " + std::to_string(v));
    };
    positive("vocab_size", vocab_size);
    positive("hidden", hidden);
    positive("heads", heads);
    positive("kv_heads", kv_heads);
    positive("window", window);
    positive("chunk_size", chunk_size);
    positive("topk", topk);
    positive("retrieval_heads", retrieval_heads);
    if (hidden % heads != 0) bad("hidden", std::to_string(hidden) + " is not divisible by heads = " + std::to_string(heads));
    if (heads % kv_heads != 0) bad("heads", std::to_string(heads) + " is not divisible by kv_heads = " + std::to_string(kv_heads));
    if (head_dim() % 2 != 0) bad("hidden", "head dim hidden/heads = " + std::to_string(head_dim()) + " must be even for RoPE");
    if (mlp_hidden < 0) bad("mlp_hidden", "must be >= 0 (0 = 8/3 hidden), got " + std::to_string(mlp_hidden));
    if (retrieval_dim < 0) bad("retrieval_dim", "must be >= 0 (0 = hidden), got " + std::to_string(retrieval_dim));
    if (train_topk < -1) bad("train_topk", "must be a positive number or \"all\", got " + std::to_string(train_topk));
    if (retrieval_heads != 1 && retrieval_heads != kv_heads)
        bad("retrieval_heads", "must be 1 or kv_heads = " + std::to_string(kv_heads) + ", got " + std::to_string(retrieval_heads));
    if (retrieval_size() % retrieval_heads != 0)
        bad("retrieval_dim", std::to_string(retrieval_size()) + " is not divisible by retrieval_heads = " + std::to_string(retrieval_heads));
    if (encoder_layers < 0) bad("encoder_layers", "must be >= 0, got " + std::to_string(encoder_layers));
    if (lower_layers < 0) bad("lower_layers", "must be >= 0, got " + std::to_string(lower_layers));
    if (upper_groups < 0) bad("upper_groups", "must be >= 0, got " + std::to_string(upper_groups));
    if (upper_layers < 0) bad("upper_layers", "must be >= 0, got " + std::to_string(upper_layers));
    if (encoder_layers == 0 && cls)
        bad("cls", "must be false when encoder_layers = 0: without an encoder the CLS vector sees no token of its chunk");
    if (!(rope_base > 1.0f)) bad("rope_base", "must be > 1");
    if (!(norm_eps > 0.0f)) bad("norm_eps", "must be > 0");
    if (!(init_std > 0.0f)) bad("init_std", "must be > 0");
}

ModelConfig ModelConfig::from_json(const Json& section) {
    ModelConfig c;
    ConfigReader r(section, "model");
    r.read("vocab_size", c.vocab_size);
    r.read("hidden", c.hidden);
    r.read("heads", c.heads);
    r.read("kv_heads", c.kv_heads);
    r.read("mlp_hidden", c.mlp_hidden);
    r.read("window", c.window);
    r.read("chunk_size", c.chunk_size);
    r.read("topk", c.topk);
    if (const Json* j = r.raw("train_topk")) {
        if (j->is_string() && j->as_string() == "all") c.train_topk = -1;
        else if (j->is_number() && j->as_number() >= 1 && j->as_number() == std::floor(j->as_number())) c.train_topk = static_cast<int64_t>(j->as_number());
        else r.fail("train_topk", "expected a positive integer or \"all\", got " + j->dump());
    }
    r.read("retrieval_dim", c.retrieval_dim);
    r.read("retrieval_heads", c.retrieval_heads);
    r.read("encoder_layers", c.encoder_layers);
    r.read("lower_layers", c.lower_layers);
    r.read("upper_groups", c.upper_groups);
    r.read("upper_layers", c.upper_layers);
    r.read("cls", c.cls);
    std::string residual = "brp", weights = "softmax";
    r.read("residual", residual);
    if (residual == "brp") c.residual = ResidualMode::Brp;
    else if (residual == "standard") c.residual = ResidualMode::Standard;
    else r.fail("residual", "expected \"brp\" or \"standard\", got \"" + residual + "\"");
    r.read("weights", weights);
    if (weights == "softmax") c.stickbreak = false;
    else if (weights == "stickbreak") c.stickbreak = true;
    else r.fail("weights", "expected \"softmax\" or \"stickbreak\", got \"" + weights + "\"");
    r.read("qk_norm", c.qk_norm);
    r.read("retrieval_norm", c.retrieval_norm);
    r.read("tie_embeddings", c.tie_embeddings);
    r.read("rope_base", c.rope_base);
    r.read("norm_eps", c.norm_eps);
    r.read("init_std", c.init_std);
    r.finish();
    c.validate();
    return c;
}

Json ModelConfig::to_json() const {
    Json j = Json::object();
    j["vocab_size"] = vocab_size;
    j["hidden"] = hidden;
    j["heads"] = heads;
    j["kv_heads"] = kv_heads;
    j["mlp_hidden"] = mlp_hidden;
    j["window"] = window;
    j["chunk_size"] = chunk_size;
    j["topk"] = topk;
    j["train_topk"] = train_topk == -1 ? Json("all") : Json(train_topk == 0 ? topk : train_topk);
    j["retrieval_dim"] = retrieval_dim;
    j["retrieval_heads"] = retrieval_heads;
    j["encoder_layers"] = encoder_layers;
    j["lower_layers"] = lower_layers;
    j["upper_groups"] = upper_groups;
    j["upper_layers"] = upper_layers;
    j["cls"] = cls;
    j["residual"] = residual == ResidualMode::Brp ? "brp" : "standard";
    j["weights"] = stickbreak ? "stickbreak" : "softmax";
    j["qk_norm"] = qk_norm;
    j["retrieval_norm"] = retrieval_norm;
    j["tie_embeddings"] = tie_embeddings;
    j["rope_base"] = static_cast<double>(rope_base);
    j["norm_eps"] = static_cast<double>(norm_eps);
    j["init_std"] = static_cast<double>(init_std);
    return j;
}

ModelConfig paper_scale_model_config() {
    ModelConfig c;
    c.vocab_size = 50304;
    c.hidden = 1024;
    c.heads = 16;
    c.kv_heads = 1;
    c.mlp_hidden = 2752;
    c.window = 512;
    c.chunk_size = 64;
    c.topk = 8;
    c.retrieval_dim = 1024;
    c.encoder_layers = 1;
    c.lower_layers = 8;
    c.upper_groups = 2;
    c.upper_layers = 3;
    c.validate();
    return c;
}

void apply_override(Json& config, const std::string& assignment) {
    auto eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0)
        throw ConfigError("--set " + assignment + ": expected section.key=value");
    std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);
    auto dot = path.find('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 == path.size())
        throw ConfigError("--set " + assignment + ": expected section.key=value, e.g. model.hidden=128");
    Json value;
    try {
        value = Json::parse(text, "--set value");
    } catch (const Error&) {
        value = Json(text);  // bare words are strings: residual=standard
    }
    Json& section = config[path.substr(0, dot)];
    if (!section.is_object()) section = Json::object();
    section[path.substr(dot + 1)] = value;
}

}  // namespace hsa
