// Image decoding and the bundle's preprocessing, identical to Python's (PIL + numpy).
//
// - decode: binary PPM/PGM (P6/P5) always; PNG, JPEG, BMP, TGA... through stb_image.h when the
//   build found it (EDGEDISTILL_HAVE_STB). PNG and PPM decode to exactly PIL's pixels; JPEG
//   decoders differ slightly (stb_image is not libjpeg), and EXIF orientation is not applied.
// - resample(): Pillow's convolution resampling (src/libImaging/Resample.c, Pillow 13):
//   8-bit fixed-point coefficients, two passes, the same pass order, so the resized pixels
//   are bit-for-bit PIL's.
// - preprocess(): torchvision's Resize(short side) + CenterCrop + ToTensor + Normalize as
//   the manifest describes, in float32 arithmetic (build without -ffast-math / FP contraction).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef EDGEDISTILL_HAVE_STB
#include <stb_image.h>
#endif

namespace edgeimage {

struct Image {  // 8-bit RGB, row-major
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;
};

// ---------------------------------------------------------------------------- decoding

inline Image read_pnm(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw std::runtime_error("cannot open image " + path);
    auto token = [&]() {
        std::string t;
        int c;
        while ((c = std::fgetc(f)) != EOF) {
            if (c == '#') { while ((c = std::fgetc(f)) != EOF && c != '\n') {} continue; }
            if (std::isspace(c)) { if (!t.empty()) break; continue; }
            t += static_cast<char>(c);
        }
        return t;
    };
    std::string magic = token();
    Image img;
    int maxval = 0;
    try {
        img.width = std::stoi(token());
        img.height = std::stoi(token());
        maxval = std::stoi(token());
    } catch (const std::exception&) {
        std::fclose(f);
        throw std::runtime_error("bad PPM/PGM header in " + path);
    }
    if ((magic != "P6" && magic != "P5") || maxval != 255 || img.width < 1 || img.height < 1) {
        std::fclose(f);
        throw std::runtime_error(path + ": only binary PPM/PGM (P6/P5) with maxval 255 are read without stb_image");
    }
    size_t channels = magic == "P6" ? 3 : 1, n = static_cast<size_t>(img.width) * img.height;
    std::vector<uint8_t> raw(n * channels);
    size_t got = std::fread(raw.data(), 1, raw.size(), f);
    std::fclose(f);
    if (got != raw.size()) throw std::runtime_error("truncated image " + path);
    img.rgb.resize(n * 3);
    for (size_t i = 0; i < n; ++i)
        for (size_t c = 0; c < 3; ++c) img.rgb[i * 3 + c] = raw[i * channels + (channels == 3 ? c : 0)];
    return img;
}

inline bool ends_with(std::string s, const std::string& suffix) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

inline Image load_rgb(const std::string& path) {
    if (ends_with(path, ".ppm") || ends_with(path, ".pgm") || ends_with(path, ".pnm")) return read_pnm(path);
#ifdef EDGEDISTILL_HAVE_STB
    Image img;
    int comps = 0;
    if (stbi_is_16_bit(path.c_str())) {
        // as PIL: 16-bit RGB keeps the high byte; 16-bit grayscale is scaled by 1/257 (edgedistill's rule)
        stbi_us* data = stbi_load_16(path.c_str(), &img.width, &img.height, &comps, 3);
        if (!data) throw std::runtime_error("cannot read image " + path + ": " + stbi_failure_reason());
        size_t n = static_cast<size_t>(img.width) * img.height * 3;
        img.rgb.resize(n);
        for (size_t i = 0; i < n; ++i)
            img.rgb[i] = comps <= 2 ? static_cast<uint8_t>(std::lrint(data[i] / 257.0)) : static_cast<uint8_t>(data[i] >> 8);
        stbi_image_free(data);
        return img;
    }
    unsigned char* data = stbi_load(path.c_str(), &img.width, &img.height, &comps, 3);  // alpha dropped, gray replicated
    if (!data) throw std::runtime_error("cannot read image " + path + ": " + stbi_failure_reason());
    img.rgb.assign(data, data + static_cast<size_t>(img.width) * img.height * 3);
    stbi_image_free(data);
    return img;
#else
    throw std::runtime_error(path + ": this build reads PPM/PGM only (stb_image.h was not found: apt install libstb-dev)");
#endif
}

// ---------------------------------------------------------------------------- Pillow's resampling

struct Filter {
    double support;
    double (*f)(double);
};

inline double bicubic(double x) {
    const double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}
inline double bilinear(double x) {
    x = std::fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}
inline double box(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }
inline double hamming(double x) {
    x = std::fabs(x);
    if (x == 0.0) return 1.0;
    if (x >= 1.0) return 0.0;
    x *= M_PI;
    return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
}
inline double sinc(double x) { return x == 0.0 ? 1.0 : std::sin(x * M_PI) / (x * M_PI); }
inline double lanczos(double x) { return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0; }

inline Filter filter_named(const std::string& name) {
    if (name == "bicubic") return {2.0, bicubic};
    if (name == "bilinear") return {1.0, bilinear};
    if (name == "box") return {0.5, box};
    if (name == "hamming") return {1.0, hamming};
    if (name == "lanczos") return {3.0, lanczos};
    throw std::runtime_error("interpolation \"" + name + "\" is not supported (bicubic, bilinear, box, hamming, lanczos)");
}

constexpr int kPrecisionBits = 32 - 8 - 2;

inline uint8_t clip8(int32_t ss) { return static_cast<uint8_t>(std::min(255, std::max(0, ss >> kPrecisionBits))); }

// One pass along x (horizontal) or y, as Pillow's ImagingResample{Horizontal,Vertical}_8bpc.
inline Image resample_pass(const Image& in, int out_size, const Filter& filter, bool horizontal) {
    const int in_size = horizontal ? in.width : in.height;
    const double scale = static_cast<double>(in_size) / out_size;
    const double filterscale = std::max(scale, 1.0);
    const double support = filter.support * filterscale;
    const int ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    std::vector<int> bounds(static_cast<size_t>(out_size) * 2);
    std::vector<int32_t> kk(static_cast<size_t>(out_size) * ksize, 0);
    std::vector<double> w(ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = (xx + 0.5) * scale, ss = 1.0 / filterscale;
        const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
        const int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) ww += (w[x] = filter.f((x + xmin - center + 0.5) * ss));
        for (int x = 0; x < xmax; ++x) {
            const double k = ww != 0.0 ? w[x] / ww : w[x];
            kk[static_cast<size_t>(xx) * ksize + x] =
                static_cast<int32_t>(k < 0 ? -0.5 + k * (1 << kPrecisionBits) : 0.5 + k * (1 << kPrecisionBits));
        }
        bounds[xx * 2] = xmin;
        bounds[xx * 2 + 1] = xmax;
    }
    Image out;
    out.width = horizontal ? out_size : in.width;
    out.height = horizontal ? in.height : out_size;
    out.rgb.resize(static_cast<size_t>(out.width) * out.height * 3);
    for (int yy = 0; yy < out.height; ++yy) {
        for (int xx = 0; xx < out.width; ++xx) {
            const int o = horizontal ? xx : yy;
            const int start = bounds[o * 2], n = bounds[o * 2 + 1];
            const int32_t* k = &kk[static_cast<size_t>(o) * ksize];
            int32_t s[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1)};
            for (int i = 0; i < n; ++i) {
                const size_t p = (horizontal ? static_cast<size_t>(yy) * in.width + start + i
                                             : static_cast<size_t>(start + i) * in.width + xx) * 3;
                for (int c = 0; c < 3; ++c) s[c] += in.rgb[p + c] * k[i];
            }
            const size_t q = (static_cast<size_t>(yy) * out.width + xx) * 3;
            for (int c = 0; c < 3; ++c) out.rgb[q + c] = clip8(s[c]);
        }
    }
    return out;
}

inline Image resample(const Image& in, int out_w, int out_h, const std::string& interpolation) {
    const Filter filter = filter_named(interpolation);
    // Pillow 13: vertical pass first when the height shrinks more than twice as much as the width
    const bool horizontal_first = !(in.height - out_h > 0 && in.height - out_h > (in.width - out_w) * 2);
    Image img = in;
    if (horizontal_first && out_w != img.width) img = resample_pass(img, out_w, filter, true);
    if (out_h != img.height) img = resample_pass(img, out_h, filter, false);
    if (!horizontal_first && out_w != img.width) img = resample_pass(img, out_w, filter, true);
    return img;
}

// ---------------------------------------------------------------------------- preprocessing

struct Spec {
    int resize_h = 0, resize_w = 0;  // both 0: no resize; resize_w 0: short side -> resize_h
    int crop_h = 0, crop_w = 0;
    std::string interpolation = "bicubic";
    float mean[3] = {0.f, 0.f, 0.f}, std[3] = {1.f, 1.f, 1.f};
    double scale = 1.0 / 255.0;
    bool bgr = false, nchw = true;
};

// Python's round() of a multiple of 0.5: halves go to the even neighbour.
inline int round_half_even(double v) {
    const double f = std::floor(v), d = v - f;
    if (d > 0.5) return static_cast<int>(f) + 1;
    if (d < 0.5) return static_cast<int>(f);
    return static_cast<int>(f) % 2 == 0 ? static_cast<int>(f) : static_cast<int>(f) + 1;
}

// One image -> (3, crop_h, crop_w) float32 (or (crop_h, crop_w, 3) when !nchw).
inline std::vector<float> preprocess(const Image& src, const Spec& spec) {
    Image img = src;
    int w = img.width, h = img.height, rw = w, rh = h;
    if (spec.resize_w > 0) {
        rw = spec.resize_w;
        rh = spec.resize_h;
    } else if (spec.resize_h > 0) {  // torchvision: short side -> resize, long side truncated
        const int r = spec.resize_h;
        if (w <= h) { rw = r; rh = static_cast<int>(static_cast<double>(r) * h / w); }
        else { rh = r; rw = static_cast<int>(static_cast<double>(r) * w / h); }
    }
    if (rw != w || rh != h) img = resample(img, rw, rh, spec.interpolation);
    const int ch = spec.crop_h, cw = spec.crop_w;
    const int pad_w = std::max(cw, img.width), pad_h = std::max(ch, img.height);  // zero padding if smaller
    const int off_x = (pad_w - img.width) / 2, off_y = (pad_h - img.height) / 2;
    const int left = round_half_even((pad_w - cw) / 2.0), top = round_half_even((pad_h - ch) / 2.0);
    const float divisor = static_cast<float>(1.0 / spec.scale);  // x / 255 as ToTensor does
    std::vector<float> out(static_cast<size_t>(3) * ch * cw);
    for (int y = 0; y < ch; ++y) {
        for (int x = 0; x < cw; ++x) {
            const int sx = x + left - off_x, sy = y + top - off_y;
            const bool inside = sx >= 0 && sy >= 0 && sx < img.width && sy < img.height;
            for (int c = 0; c < 3; ++c) {
                const int from = spec.bgr ? 2 - c : c;
                const float v = inside ? img.rgb[(static_cast<size_t>(sy) * img.width + sx) * 3 + from] : 0.f;
                const float value = (v / divisor - spec.mean[from]) / spec.std[from];
                out[spec.nchw ? (static_cast<size_t>(c) * ch + y) * cw + x : (static_cast<size_t>(y) * cw + x) * 3 + c] = value;
            }
        }
    }
    return out;
}

}  // namespace edgeimage
