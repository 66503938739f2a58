// edgedistill_embed: embed images with an edgedistill bundle's OpenVINO IR, and optionally
// classify them by k-NN against a gallery .json written by the Python examples.
//
//   edgedistill_embed --bundle export/my_student [--variant openvino_fp32] [--gallery gallery.json]
//                     [--k 20] [--temperature 0.07] [--threads N] [--device CPU] [--json] IMAGE...
//
// Prints `path<TAB>label` per image with --gallery, `path<TAB>v0,v1,...` (the raw embedding)
// without; --json prints one object with embeddings, labels and votes. Exit status 2 on a
// user error (bad bundle, unreadable image), with one line on stderr.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <openvino/openvino.hpp>

#include "image.hpp"

namespace {

using json = nlohmann::json;

// A JSON string literal for output (the numbers are printed with %.9g: float32 round-trips).
std::string quote(const std::string& s) { return json(s).dump(); }

struct Options {
    std::string bundle, variant, gallery, device = "CPU";
    int k = 20, threads = 0;
    double temperature = 0.07;
    bool json = false;
    std::vector<std::string> images;
};

const char* kUsage =
    "usage: edgedistill_embed --bundle DIR [--variant NAME] [--gallery GALLERY.json] [--k 20]\n"
    "                         [--temperature 0.07] [--threads N] [--device CPU] [--json] IMAGE...\n";

template <typename T>
T number(const std::string& flag, const std::string& text) {
    std::istringstream in(text);
    T value{};
    if (!(in >> value) || !in.eof()) throw std::invalid_argument(flag + " takes a number, got " + text);
    return value;
}

Options parse_args(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
            return argv[++i];
        };
        if (a == "--bundle") o.bundle = next();
        else if (a == "--variant") o.variant = next();
        else if (a == "--gallery") o.gallery = next();
        else if (a == "--device") o.device = next();
        else if (a == "--k") o.k = number<int>(a, next());
        else if (a == "--threads") o.threads = number<int>(a, next());
        else if (a == "--temperature") o.temperature = number<double>(a, next());
        else if (a == "--json") o.json = true;
        else if (a == "-h" || a == "--help") { std::cout << kUsage; std::exit(0); }
        else if (a.rfind("--", 0) == 0) throw std::invalid_argument("unknown option " + a);
        else o.images.push_back(a);
    }
    if (o.bundle.empty() || o.images.empty()) throw std::invalid_argument("--bundle and at least one image are required");
    if (o.k < 1 || o.temperature <= 0 || o.threads < 0) throw std::invalid_argument("--k >= 1 and --temperature > 0 please");
    return o;
}

json read_json(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot read " + path);
    try {
        return json::parse(f);
    } catch (const json::parse_error& e) {
        throw std::runtime_error(path + " is not valid JSON (" + e.what() + ")");
    }
}

std::string text(const json& object, const std::string& key) { return object.at(key).get<std::string>(); }

// The variant to run: the one asked for, else the manifest's default when it is OpenVINO,
// else the first fp32 OpenVINO variant, else any OpenVINO variant.
std::string pick_variant(const json& manifest, const std::string& wanted) {
    const json& variants = manifest.at("variants");
    if (!wanted.empty()) {
        if (!variants.contains(wanted)) throw std::runtime_error("the bundle has no variant " + wanted);
        if (text(variants.at(wanted), "format") != "openvino")
            throw std::runtime_error("variant " + wanted + " is not an OpenVINO IR");
        return wanted;
    }
    if (manifest.contains("default_variant") && manifest.at("default_variant").is_string()) {
        const std::string name = text(manifest, "default_variant");
        if (variants.contains(name) && text(variants.at(name), "format") == "openvino") return name;
    }
    std::string any;
    for (const auto& [name, var] : variants.items()) {  // alphabetical, which is fine here
        if (text(var, "format") != "openvino") continue;
        if (text(var, "precision") == "fp32") return name;
        if (any.empty()) any = name;
    }
    if (any.empty()) throw std::runtime_error("the bundle has no OpenVINO variant");
    return any;
}

void pair_of(const json& v, int& h, int& w) {
    if (v.is_number()) { h = w = v.get<int>(); return; }
    h = v.at(0).get<int>();
    w = v.at(v.size() - 1).get<int>();
}

edgeimage::Spec spec_of(const json& pp) {
    edgeimage::Spec s;
    const json& resize = pp.at("resize");
    if (resize.is_number()) s.resize_h = resize.get<int>();
    else if (resize.is_array() && resize.size() == 1) s.resize_h = resize.at(0).get<int>();
    else if (resize.is_array()) pair_of(resize, s.resize_h, s.resize_w);
    pair_of(pp.at("crop"), s.crop_h, s.crop_w);
    s.interpolation = pp.value("interpolation", s.interpolation);
    for (int c = 0; c < 3; ++c) {
        s.mean[c] = pp.at("mean").at(c).get<float>();
        s.std[c] = pp.at("std").at(c).get<float>();
    }
    if (pp.contains("scale")) {
        const json& sc = pp.at("scale");
        if (sc.is_number()) s.scale = sc.get<double>();
        else {  // "1/255"
            const std::string t = sc.get<std::string>();
            auto slash = t.find('/');
            s.scale = slash == std::string::npos ? std::stod(t) : std::stod(t.substr(0, slash)) / std::stod(t.substr(slash + 1));
        }
    }
    s.bgr = pp.value("channel_order", std::string("RGB")) == "BGR";
    s.nchw = pp.value("layout", std::string("NCHW")) != "NHWC";
    return s;
}

struct Gallery {
    std::vector<std::string> classes;
    std::vector<int> labels;
    std::vector<float> embeddings;  // n x dim, L2-normalized
    int dim = 0;
    std::string variant;
};

Gallery read_gallery(const std::string& path) {
    const json doc = read_json(path);
    if (doc.value("format", std::string()) != "edgedistill-gallery")
        throw std::runtime_error(path + " is not an edgedistill gallery .json (write one with classify.py --gallery-json)");
    Gallery g;
    g.classes = doc.at("classes").get<std::vector<std::string>>();
    g.labels = doc.at("labels").get<std::vector<int>>();
    g.dim = doc.at("dim").get<int>();
    g.variant = doc.value("variant", std::string());
    const json& rows = doc.at("embeddings");
    if (rows.size() != g.labels.size()) throw std::runtime_error(path + ": as many embeddings as labels expected");
    for (const json& row : rows) {
        if (static_cast<int>(row.size()) != g.dim) throw std::runtime_error(path + ": an embedding has the wrong length");
        for (const json& v : row) g.embeddings.push_back(v.get<float>());
    }
    for (int label : g.labels)
        if (label < 0 || label >= static_cast<int>(g.classes.size())) throw std::runtime_error(path + ": label out of range");
    if (g.labels.empty()) throw std::runtime_error(path + ": the gallery is empty");
    return g;
}

struct Prediction {
    int label = 0;
    std::vector<double> votes;
    std::vector<std::pair<int, float>> neighbours;  // (gallery index, cosine similarity)
};

// DINO-weighted k-NN: the k most similar gallery rows (ties: lower index) vote exp(sim / T)
// for their class; most votes wins (ties: lower class), as edgedistill.runtime.knn_predict.
Prediction knn(const Gallery& g, const std::vector<float>& embedding, int k, double temperature) {
    double norm = 0;
    for (float v : embedding) norm += static_cast<double>(v) * v;
    const float scale = static_cast<float>(std::max(std::sqrt(norm), 1e-12));
    const size_t n = g.labels.size();
    std::vector<float> sims(n);
    for (size_t i = 0; i < n; ++i) {
        double s = 0;
        for (int d = 0; d < g.dim; ++d) s += static_cast<double>(embedding[d] / scale) * g.embeddings[i * g.dim + d];
        sims[i] = static_cast<float>(s);
    }
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sims[a] > sims[b]; });
    Prediction p;
    p.votes.assign(g.classes.size(), 0.0);
    const size_t used = std::min(static_cast<size_t>(k), n);
    for (size_t j = 0; j < used; ++j) {
        const int i = order[j];
        p.votes[g.labels[i]] += static_cast<float>(std::exp(static_cast<double>(sims[i]) / temperature));
        p.neighbours.emplace_back(i, sims[i]);
    }
    p.label = static_cast<int>(std::max_element(p.votes.begin(), p.votes.end()) - p.votes.begin());
    return p;
}

std::string fmt(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return buf;
}

int run(const Options& o) {
    const std::string sep = o.bundle.back() == '/' ? "" : "/";
    const json manifest = read_json(o.bundle + sep + "manifest.json");
    if (manifest.value("format_version", 0) != 1) throw std::runtime_error("this program reads bundle format_version 1");
    const std::string variant = pick_variant(manifest, o.variant);
    const json& var = manifest.at("variants").at(variant);
    const std::string xml = o.bundle + sep + text(var, "file");
    std::string bin = xml.substr(0, xml.size() - 4) + ".bin";
    if (var.contains("weights_file")) bin = o.bundle + sep + text(var, "weights_file");
    const std::string input_name = text(manifest.at("input"), "name");
    const std::string output_name = text(manifest.at("outputs").at(0), "name");
    const edgeimage::Spec spec = spec_of(manifest.at("preprocessing"));

    Gallery gallery;
    if (!o.gallery.empty()) {
        gallery = read_gallery(o.gallery);
        if (!gallery.variant.empty() && gallery.variant != variant)
            std::cerr << "note: the gallery was embedded with " << gallery.variant << ", the images with " << variant << "\n";
    }

    // The recorded precision hint ("f32"): without it OpenVINO runs an FP32 IR in bf16 on
    // CPUs that have bf16, which is not what the bundle validated.
    ov::AnyMap config{{"INFERENCE_PRECISION_HINT", var.value("inference_precision_hint", std::string("f32"))}};
    if (o.threads > 0) config["INFERENCE_NUM_THREADS"] = o.threads;
    ov::Core core;
    ov::CompiledModel compiled = core.compile_model(core.read_model(xml, bin), o.device, config);
    ov::InferRequest request = compiled.create_infer_request();
    const ov::Output<const ov::Node> output = compiled.output(output_name);

    std::ostringstream json;
    json << "{\"bundle\": " << quote(o.bundle) << ", \"variant\": " << quote(variant)
         << ", \"device\": " << quote(o.device) << ", \"results\": [";
    for (size_t i = 0; i < o.images.size(); ++i) {
        const std::string& path = o.images[i];
        std::vector<float> x = edgeimage::preprocess(edgeimage::load_rgb(path), spec);
        const ov::Shape shape = spec.nchw ? ov::Shape{1, 3, static_cast<size_t>(spec.crop_h), static_cast<size_t>(spec.crop_w)}
                                          : ov::Shape{1, static_cast<size_t>(spec.crop_h), static_cast<size_t>(spec.crop_w), 3};
        request.set_tensor(compiled.input(input_name), ov::Tensor(ov::element::f32, shape, x.data()));
        request.infer();
        const ov::Tensor out = request.get_tensor(output);
        const float* data = out.data<const float>();
        std::vector<float> embedding(data, data + out.get_size());

        Prediction pred;
        const bool classify = !gallery.labels.empty();
        if (classify) {
            if (static_cast<int>(embedding.size()) != gallery.dim)
                throw std::runtime_error("the gallery's embeddings have " + std::to_string(gallery.dim) +
                                         " dims, the model's " + std::to_string(embedding.size()));
            pred = knn(gallery, embedding, o.k, o.temperature);
        }
        if (!o.json) {
            std::cout << path << "\t";
            if (classify) std::cout << gallery.classes[pred.label];
            else for (size_t d = 0; d < embedding.size(); ++d) std::cout << (d ? "," : "") << fmt(embedding[d]);
            std::cout << "\n";
            continue;
        }
        json << (i ? ",\n  " : "\n  ") << "{\"path\": " << quote(path) << ", \"embedding\": [";
        for (size_t d = 0; d < embedding.size(); ++d) json << (d ? "," : "") << fmt(embedding[d]);
        json << "]";
        if (classify) {
            json << ", \"label\": " << quote(gallery.classes[pred.label]) << ", \"class_index\": " << pred.label
                 << ", \"votes\": {";
            for (size_t c = 0; c < gallery.classes.size(); ++c)
                json << (c ? ", " : "") << quote(gallery.classes[c]) << ": " << fmt(pred.votes[c]);
            json << "}, \"neighbours\": [";
            for (size_t j = 0; j < std::min<size_t>(5, pred.neighbours.size()); ++j)
                json << (j ? ", " : "") << "{\"index\": " << pred.neighbours[j].first << ", \"similarity\": "
                     << fmt(pred.neighbours[j].second) << "}";
            json << "]";
        }
        json << "}";
    }
    if (o.json) std::cout << json.str() << "\n]}\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    Options options;
    try {
        options = parse_args(argc, argv);
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n" << kUsage;
        return 2;
    }
    try {
        return run(options);
    } catch (const std::exception& e) {  // bad bundle or image, OpenVINO errors: one line
        std::string msg = e.what();
        msg = msg.substr(0, msg.find('\n'));
        std::cerr << "error: " << msg << "\n";
        return 2;
    }
}
