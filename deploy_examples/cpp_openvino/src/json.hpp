// A small JSON reader: enough for a bundle's manifest.json and a gallery .json (objects,
// arrays, strings with escapes, numbers, true/false/null). No dependencies; errors throw
// std::runtime_error with the byte offset. Swap in nlohmann::json if your app has it.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace minijson {

struct Value {
    enum class Type { Null, Bool, Number, String, Array, Object } type = Type::Null;
    bool boolean = false;
    double number = 0.0;
    std::string string;
    std::vector<Value> array;
    std::map<std::string, Value> object;

    bool is_null() const { return type == Type::Null; }
    bool is_number() const { return type == Type::Number; }
    bool is_string() const { return type == Type::String; }
    bool is_array() const { return type == Type::Array; }
    bool is_object() const { return type == Type::Object; }
    bool has(const std::string& key) const { return is_object() && object.count(key) > 0; }

    const Value& at(const std::string& key) const {
        if (!is_object()) throw std::runtime_error("JSON: expected an object holding \"" + key + "\"");
        auto it = object.find(key);
        if (it == object.end()) throw std::runtime_error("JSON: missing key \"" + key + "\"");
        return it->second;
    }
    const Value& at(size_t i) const {
        if (!is_array() || i >= array.size()) throw std::runtime_error("JSON: index out of range");
        return array[i];
    }
    double num() const {
        if (!is_number()) throw std::runtime_error("JSON: expected a number");
        return number;
    }
    const std::string& str() const {
        if (!is_string()) throw std::runtime_error("JSON: expected a string");
        return string;
    }
    size_t size() const { return is_array() ? array.size() : object.size(); }
};

class Parser {
public:
    explicit Parser(const std::string& text) : s_(text) {}

    Value parse() {
        Value v = value();
        space();
        if (i_ != s_.size()) fail("trailing characters");
        return v;
    }

private:
    const std::string& s_;
    size_t i_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error("JSON: " + what + " at byte " + std::to_string(i_));
    }
    void space() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
    }
    bool eat(char c) {
        space();
        if (i_ < s_.size() && s_[i_] == c) { ++i_; return true; }
        return false;
    }
    void expect(char c) {
        if (!eat(c)) fail(std::string("expected '") + c + "'");
    }
    bool literal(const char* word) {
        size_t n = std::char_traits<char>::length(word);
        if (s_.compare(i_, n, word) == 0) { i_ += n; return true; }
        return false;
    }

    Value value() {
        space();
        if (i_ >= s_.size()) fail("unexpected end");
        Value v;
        char c = s_[i_];
        if (c == '{') {
            ++i_;
            v.type = Value::Type::Object;
            if (eat('}')) return v;
            do {
                space();
                std::string key = string();
                expect(':');
                v.object[key] = value();
            } while (eat(','));
            expect('}');
        } else if (c == '[') {
            ++i_;
            v.type = Value::Type::Array;
            if (eat(']')) return v;
            do v.array.push_back(value()); while (eat(','));
            expect(']');
        } else if (c == '"') {
            v.type = Value::Type::String;
            v.string = string();
        } else if (literal("true")) {
            v.type = Value::Type::Bool; v.boolean = true;
        } else if (literal("false")) {
            v.type = Value::Type::Bool;
        } else if (literal("null")) {
        } else if (literal("NaN") || literal("Infinity") || literal("-Infinity")) {
            fail("non-finite number");
        } else {
            const char* start = s_.c_str() + i_;
            char* end = nullptr;
            v.type = Value::Type::Number;
            v.number = std::strtod(start, &end);
            if (end == start) fail("unexpected character");
            i_ += static_cast<size_t>(end - start);
        }
        return v;
    }

    static void utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) out += static_cast<char>(cp);
        else if (cp < 0x800) { out += static_cast<char>(0xC0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18)); out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }
    unsigned hex4() {
        if (i_ + 4 > s_.size()) fail("bad \\u escape");
        unsigned v = static_cast<unsigned>(std::stoul(s_.substr(i_, 4), nullptr, 16));
        i_ += 4;
        return v;
    }

    std::string string() {
        if (i_ >= s_.size() || s_[i_] != '"') fail("expected a string");
        ++i_;
        std::string out;
        while (true) {
            if (i_ >= s_.size()) fail("unterminated string");
            char c = s_[i_++];
            if (c == '"') return out;
            if (c != '\\') { out += c; continue; }
            if (i_ >= s_.size()) fail("unterminated string");
            char e = s_[i_++];
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
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(i_, 2, "\\u") == 0) {  // surrogate pair
                        i_ += 2;
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (hex4() - 0xDC00);
                    }
                    utf8(out, cp);
                    break;
                }
                default: fail("bad escape");
            }
        }
    }
};

inline Value parse(const std::string& text) { return Parser(text).parse(); }

// A JSON string literal for output.
inline std::string quote(const std::string& s) {
    std::string out = "\"";
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
    return out + "\"";
}

}  // namespace minijson
