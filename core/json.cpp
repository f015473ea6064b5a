#include "core/json.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/tensor.h"
#include "core/utf8.h"

namespace hsa {

namespace {

class Parser {
public:
    Parser(const std::string& text, const std::string& source) : text_(text), source_(source) {}

    Json parse_document() {
        skip_space();
        Json value = parse_value(0);
        skip_space();
        if (pos_ != text_.size()) fail("unexpected text after the JSON value");
        return value;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        size_t line = 1, column = 1;
        for (size_t i = 0; i < pos_ && i < text_.size(); ++i) {
            if (text_[i] == '\n') { ++line; column = 1; } else { ++column; }
        }
        HSA_FAIL(source_ << ": line " << line << " column " << column << ": " << what);
    }

    void skip_space() {
        while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) ++pos_;
    }

    bool consume(const char* word) {
        size_t n = std::char_traits<char>::length(word);
        if (text_.compare(pos_, n, word) == 0) { pos_ += n; return true; }
        return false;
    }

    Json parse_value(int depth) {
        if (depth > 256) fail("nesting deeper than 256 levels");
        if (pos_ >= text_.size()) fail("unexpected end of input, expected a value");
        char c = text_[pos_];
        if (c == '{') return parse_object(depth);
        if (c == '[') return parse_array(depth);
        if (c == '"') return Json(parse_string());
        if (consume("true")) return Json(true);
        if (consume("false")) return Json(false);
        if (consume("null")) return Json();
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
        fail(std::string("unexpected character '") + c + "'");
    }

    Json parse_object(int depth) {
        Json out = Json::object();
        ++pos_;
        skip_space();
        if (pos_ < text_.size() && text_[pos_] == '}') { ++pos_; return out; }
        while (true) {
            skip_space();
            if (pos_ >= text_.size() || text_[pos_] != '"') fail("expected a field name in quotes");
            std::string key = parse_string();
            if (out.contains(key)) fail("duplicate field \"" + key + "\"");
            skip_space();
            if (pos_ >= text_.size() || text_[pos_] != ':') fail("expected ':' after field name");
            ++pos_;
            skip_space();
            out[key] = parse_value(depth + 1);
            skip_space();
            if (pos_ < text_.size() && text_[pos_] == ',') { ++pos_; continue; }
            if (pos_ < text_.size() && text_[pos_] == '}') { ++pos_; return out; }
            fail("expected ',' or '}' in object");
        }
    }

    Json parse_array(int depth) {
        Json out = Json::array();
        ++pos_;
        skip_space();
        if (pos_ < text_.size() && text_[pos_] == ']') { ++pos_; return out; }
        while (true) {
            skip_space();
            out.push_back(parse_value(depth + 1));
            skip_space();
            if (pos_ < text_.size() && text_[pos_] == ',') { ++pos_; continue; }
            if (pos_ < text_.size() && text_[pos_] == ']') { ++pos_; return out; }
            fail("expected ',' or ']' in array");
        }
    }

    uint32_t parse_hex4() {
        if (pos_ + 4 > text_.size()) fail("truncated \\u escape");
        uint32_t v = 0;
        for (int i = 0; i < 4; ++i) {
            char h = text_[pos_++];
            v <<= 4;
            if (h >= '0' && h <= '9') v |= h - '0';
            else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
            else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
            else fail("bad hex digit in \\u escape");
        }
        return v;
    }

    std::string parse_string() {
        ++pos_;  // opening quote
        std::string out;
        while (true) {
            if (pos_ >= text_.size()) fail("unterminated string");
            char c = text_[pos_++];
            if (c == '"') return out;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character inside a string");
            if (c != '\\') { out += c; continue; }
            if (pos_ >= text_.size()) fail("unterminated escape");
            char e = text_[pos_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    uint32_t cp = parse_hex4();
                    if (cp >= 0xDC00 && cp < 0xE000) fail("unpaired low surrogate in \\u escape");
                    if (cp >= 0xD800 && cp < 0xDC00) {
                        if (!consume("\\u")) fail("unpaired surrogate in \\u escape");
                        uint32_t low = parse_hex4();
                        if (low < 0xDC00 || low >= 0xE000) fail("bad low surrogate in \\u escape");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: fail(std::string("unknown escape '\\") + e + "'");
            }
        }
    }

    Json parse_number() {
        size_t start = pos_;
        if (text_[pos_] == '-') ++pos_;
        auto digits = [&] {
            size_t s = pos_;
            while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
            return pos_ - s;
        };
        if (pos_ < text_.size() && text_[pos_] == '0') ++pos_;
        else if (digits() == 0) fail("malformed number");
        if (pos_ < text_.size() && text_[pos_] == '.') { ++pos_; if (digits() == 0) fail("malformed number"); }
        if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
            ++pos_;
            if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
            if (digits() == 0) fail("malformed number");
        }
        return Json(std::strtod(text_.substr(start, pos_ - start).c_str(), nullptr));
    }

    const std::string& text_;
    std::string source_;
    size_t pos_ = 0;
};

void dump_string(std::string& out, const std::string& s) {
    out += '"';
    for (unsigned char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    out += '"';
}

}  // namespace

Json Json::parse(const std::string& text, const std::string& source) { return Parser(text, source).parse_document(); }

const char* Json::kind_name() const {
    switch (kind_) {
        case Kind::Null: return "null";
        case Kind::Bool: return "boolean";
        case Kind::Number: return "number";
        case Kind::String: return "string";
        case Kind::Array: return "array";
        case Kind::Object: return "object";
    }
    return "?";
}

const Json& Json::at(const std::string& key) const {
    auto it = object_.find(key);
    HSA_CHECK(it != object_.end(), "missing JSON field \"" << key << "\"");
    return it->second;
}

std::string Json::dump(int indent) const {
    std::string out;
    dump_to(out, indent, 0);
    return out;
}

void Json::dump_to(std::string& out, int indent, int depth) const {
    auto newline = [&](int d) {
        if (indent < 0) return;
        out += '\n';
        out.append(static_cast<size_t>(indent * d), ' ');
    };
    switch (kind_) {
        case Kind::Null: out += "null"; break;
        case Kind::Bool: out += bool_ ? "true" : "false"; break;
        case Kind::Number: {
            if (!std::isfinite(number_)) { out += "null"; break; }  // JSON has no NaN/Inf
            char buf[40];
            if (number_ == std::floor(number_) && std::fabs(number_) <= 9007199254740992.0) {
                std::snprintf(buf, sizeof buf, "%.0f", number_);  // integers exactly, up to 2^53
            } else {
                // Shortest of 15..17 significant digits that reads back to the same double.
                for (int precision = 15; precision <= 17; ++precision) {
                    std::snprintf(buf, sizeof buf, "%.*g", precision, number_);
                    if (std::strtod(buf, nullptr) == number_) break;
                }
            }
            out += buf;
            break;
        }
        case Kind::String: dump_string(out, string_); break;
        case Kind::Array: {
            out += '[';
            for (size_t i = 0; i < array_.size(); ++i) {
                if (i) out += indent < 0 ? "," : ",";
                newline(depth + 1);
                array_[i].dump_to(out, indent, depth + 1);
            }
            if (!array_.empty()) newline(depth);
            out += ']';
            break;
        }
        case Kind::Object: {
            out += '{';
            bool first = true;
            for (const auto& [key, value] : object_) {
                if (!first) out += ',';
                first = false;
                newline(depth + 1);
                dump_string(out, key);
                out += indent < 0 ? ":" : ": ";
                value.dump_to(out, indent, depth + 1);
            }
            if (!object_.empty()) newline(depth);
            out += '}';
            break;
        }
    }
}

std::string read_text_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    HSA_CHECK(in.good(), "cannot open file '" << path << "'");
    std::ostringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

}  // namespace hsa
