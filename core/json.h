// A small JSON value with a strict parser (RFC 8259: no comments, no trailing commas) and a
// writer. Used for configs (where every unknown field is an error) and JSONL logs.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace hsa {

class Json {
public:
    enum class Kind { Null, Bool, Number, String, Array, Object };

    Json() = default;  // null
    Json(bool b) : kind_(Kind::Bool), bool_(b) {}
    Json(double d) : kind_(Kind::Number), number_(d) {}
    Json(int v) : kind_(Kind::Number), number_(v) {}
    Json(int64_t v) : kind_(Kind::Number), number_(static_cast<double>(v)) {}
    Json(const char* s) : kind_(Kind::String), string_(s) {}
    Json(std::string s) : kind_(Kind::String), string_(std::move(s)) {}
    static Json array() { Json j; j.kind_ = Kind::Array; return j; }
    static Json object() { Json j; j.kind_ = Kind::Object; return j; }

    // Throws hsa::Error "<source>: line L column C: <what>" on malformed text.
    static Json parse(const std::string& text, const std::string& source = "json");

    Kind kind() const { return kind_; }
    const char* kind_name() const;
    bool is_null() const { return kind_ == Kind::Null; }
    bool is_bool() const { return kind_ == Kind::Bool; }
    bool is_number() const { return kind_ == Kind::Number; }
    bool is_string() const { return kind_ == Kind::String; }
    bool is_array() const { return kind_ == Kind::Array; }
    bool is_object() const { return kind_ == Kind::Object; }

    bool as_bool() const { return bool_; }
    double as_number() const { return number_; }
    const std::string& as_string() const { return string_; }
    const std::vector<Json>& items() const { return array_; }
    const std::map<std::string, Json>& fields() const { return object_; }

    void push_back(Json value) { array_.push_back(std::move(value)); }
    Json& operator[](const std::string& key) { kind_ = Kind::Object; return object_[key]; }
    bool contains(const std::string& key) const { return object_.count(key) != 0; }
    const Json& at(const std::string& key) const;

    // Compact single-line text (for JSONL) or indented with `indent` spaces.
    std::string dump(int indent = -1) const;

private:
    void dump_to(std::string& out, int indent, int depth) const;
    Kind kind_ = Kind::Null;
    bool bool_ = false;
    double number_ = 0;
    std::string string_;
    std::vector<Json> array_;
    std::map<std::string, Json> object_;  // sorted keys: dumps are deterministic
};

std::string read_text_file(const std::string& path);  // throws hsa::Error when unreadable

}  // namespace hsa
