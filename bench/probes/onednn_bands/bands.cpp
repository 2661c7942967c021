// Probe: a MobileNet inverted-residual block (1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1
// project [+ residual]) run as Ember's chain runs it today -- three primitives over the whole
// tensors, each parallel over the threads ("layers") -- against "bands": each thread takes whole
// bands of output rows and runs the three layers on them alone, single-threaded primitives over
// thread-private buffers that stay in its L2, no barrier between the layers.
// fp32, NHWC activations. Built by probe.py against the libdnnl Ember's extension links.
#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using Args = std::unordered_map<int, memory>;

dnnl::engine &eng() {
    static dnnl::engine e(dnnl::engine::kind::cpu, 0);
    return e;
}

memory packed(const memory::desc &want, const memory::desc &user, const torch::Tensor &src,
              std::vector<torch::Tensor> &keep) {
    torch::Tensor buf = torch::empty({static_cast<int64_t>(want.get_size())}, torch::kUInt8);
    keep.push_back(buf);
    memory dst(want, eng(), buf.data_ptr());
    memory from(user, eng(), src.data_ptr());
    dnnl::stream s(eng());
    dnnl::reorder(from, dst).execute(s, from, dst);
    s.wait();
    return dst;
}

const auto fwd = dnnl::prop_kind::forward_inference;
const auto direct = dnnl::algorithm::convolution_direct;

dnnl::primitive_attr attr(bool clip, const memory::desc *residual, bool user_scratch) {
    dnnl::primitive_attr a;
    dnnl::post_ops p;
    if (clip) p.append_eltwise(dnnl::algorithm::eltwise_clip, 0.f, 6.f);
    if (residual) p.append_binary(dnnl::algorithm::binary_add, *residual);
    a.set_post_ops(p);
    if (user_scratch) a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
}

struct Conv {
    dnnl::convolution_forward::primitive_desc pd;
    dnnl::convolution_forward prim;
    memory wts;
};

Conv pointwise(int64_t n, int64_t ci, int64_t co, int64_t h, int64_t w, const torch::Tensor &wt, bool clip,
               bool residual, bool user_scratch, std::vector<torch::Tensor> &keep) {
    memory::desc src({n, ci, h, w}, dt::f32, tag::nhwc), dst({n, co, h, w}, dt::f32, tag::nhwc),
        wany({co, ci, 1, 1}, dt::f32, tag::any), b({co}, dt::f32, tag::x);
    auto a = attr(clip, residual ? &dst : nullptr, user_scratch);
    dnnl::convolution_forward::primitive_desc pd(eng(), fwd, direct, src, wany, b, dst, {1, 1}, {0, 0}, {0, 0},
                                                 {0, 0}, a);
    memory wm = packed(pd.weights_desc(), memory::desc({co, ci, 1, 1}, dt::f32, tag::oihw), wt, keep);
    return {pd, dnnl::convolution_forward(pd), wm};
}

// depthwise 3x3, stride s, left pad 1, right pad so that OW = (W - 1) / s + 1; top pad `pt`,
// bottom pad `pb` (0 in bands: the band's buffer holds zero rows where the image ends)
Conv depthwise(int64_t n, int64_t c, int64_t h, int64_t w, int64_t oh, int64_t s, int64_t pt, int64_t pb,
               const torch::Tensor &wt, bool user_scratch, std::vector<torch::Tensor> &keep) {
    const int64_t ow = (w - 1) / s + 1;
    memory::desc src({n, c, h, w}, dt::f32, tag::nhwc), dst({n, c, oh, ow}, dt::f32, tag::nhwc),
        wany({c, 1, 1, 3, 3}, dt::f32, tag::any), b({c}, dt::f32, tag::x);
    auto a = attr(true, nullptr, user_scratch);
    dnnl::convolution_forward::primitive_desc pd(eng(), fwd, direct, src, wany, b, dst, {s, s}, {0, 0}, {pt, 1},
                                                 {pb, (ow - 1) * s + 3 - w - 1}, a);
    memory wm = packed(pd.weights_desc(), memory::desc({c, 1, 1, 3, 3}, dt::f32, tag::goihw), wt, keep);
    return {pd, dnnl::convolution_forward(pd), wm};
}

void exec(Conv &c, dnnl::stream &s, void *src, void *bias, void *dst, void *res, void *scratch) {
    Args args{{DNNL_ARG_SRC, memory(c.pd.src_desc(), eng(), src)}, {DNNL_ARG_WEIGHTS, c.wts},
              {DNNL_ARG_BIAS, memory(c.pd.bias_desc(), eng(), bias)},
              {DNNL_ARG_DST, memory(c.pd.dst_desc(), eng(), dst)}};
    if (res) args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, memory(c.pd.dst_desc(), eng(), res));
    if (scratch) args.emplace(DNNL_ARG_SCRATCHPAD, memory(c.pd.scratchpad_desc(), eng(), scratch));
    c.prim.execute(s, args);
}

pybind11::dict bench(const torch::Tensor &x, const torch::Tensor &we, const torch::Tensor &be,
                     const torch::Tensor &wd, const torch::Tensor &bd, const torch::Tensor &wp,
                     const torch::Tensor &bp, int64_t stride, int64_t bands, int64_t iters) {
    at::internal::lazy_init_num_threads();
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), E = we.size(0), O = wp.size(0);
    const int64_t OH = (H - 1) / stride + 1, OW = (W - 1) / stride + 1;
    const bool res = stride == 1 && C == O;
    const int T = omp_get_max_threads();
    auto opts = x.options().memory_format(at::MemoryFormat::ChannelsLast);
    std::vector<torch::Tensor> keep;
    // layers
    torch::Tensor mid = torch::empty({N, E, H, W}, opts), mid2 = torch::empty({N, E, OH, OW}, opts);
    torch::Tensor y_layers = torch::empty({N, O, OH, OW}, opts), y_bands = torch::empty({N, O, OH, OW}, opts);
    Conv c1 = pointwise(N, C, E, H, W, we, true, false, false, keep);
    Conv c2 = depthwise(N, E, H, W, OH, stride, 1, (OH - 1) * stride + 3 - H - 1, wd, false, keep);
    Conv c3 = pointwise(N, E, O, OH, OW, wp, false, res, false, keep);
    // bands: primitives made for one thread
    const int64_t hb = (OH + bands - 1) / bands;
    omp_set_num_threads(1);
    std::map<int64_t, Conv> ex, dw, pr;  // by rows
    size_t scratch = 0;
    for (int64_t b = 0; b < bands; ++b) {
        const int64_t o0 = b * hb, o1 = std::min(OH, o0 + hb);
        if (o0 >= o1) continue;
        const int64_t i0 = o0 * stride - 1, i1 = (o1 - 1) * stride + 2, v0 = std::max<int64_t>(i0, 0),
                      v1 = std::min(i1, H);
        if (!ex.count(v1 - v0)) ex.emplace(v1 - v0, pointwise(1, C, E, v1 - v0, W, we, true, false, true, keep));
        if (!dw.count(o1 - o0)) dw.emplace(o1 - o0, depthwise(1, E, i1 - i0, W, o1 - o0, stride, 0, 0, wd, true, keep));
        if (!pr.count(o1 - o0)) pr.emplace(o1 - o0, pointwise(1, E, O, o1 - o0, OW, wp, false, res, true, keep));
    }
    for (auto *m : {&ex, &dw, &pr})
        for (auto &kv : *m) scratch = std::max(scratch, kv.second.pd.scratchpad_desc().get_size());
    omp_set_num_threads(T);
    const int64_t erows = (hb - 1) * stride + 3;
    std::vector<torch::Tensor> ebuf, dbuf, sbuf;
    for (int t = 0; t < T; ++t) {
        ebuf.push_back(torch::zeros({erows * W * E}));
        dbuf.push_back(torch::zeros({hb * OW * E}));
        sbuf.push_back(torch::empty({static_cast<int64_t>(scratch / 4 + 16)}));
    }
    std::vector<dnnl::stream> streams;
    for (int t = 0; t < T; ++t) streams.emplace_back(eng());
    float *X = x.data_ptr<float>(), *Y = y_bands.data_ptr<float>();
    auto run_bands = [&]() {
        const int64_t tasks = N * bands;
#pragma omp parallel num_threads(T)
        {
            const int t = omp_get_thread_num();
            float *eb = ebuf[t].data_ptr<float>(), *db = dbuf[t].data_ptr<float>();
            void *sp = sbuf[t].data_ptr();
            for (int64_t k = t; k < tasks; k += T) {
                const int64_t n = k / bands, b = k % bands;
                const int64_t o0 = b * hb, o1 = std::min(OH, o0 + hb);
                if (o0 >= o1) continue;
                const int64_t i0 = o0 * stride - 1, i1 = (o1 - 1) * stride + 2, v0 = std::max<int64_t>(i0, 0),
                              v1 = std::min(i1, H);
                if (v0 > i0) std::memset(eb, 0, (v0 - i0) * W * E * 4);
                if (i1 > v1) std::memset(eb + (v1 - i0) * W * E, 0, (i1 - v1) * W * E * 4);
                exec(ex.at(v1 - v0), streams[t], X + (n * H + v0) * W * C, be.data_ptr(), eb + (v0 - i0) * W * E,
                     nullptr, sp);
                exec(dw.at(o1 - o0), streams[t], eb, bd.data_ptr(), db, nullptr, sp);
                exec(pr.at(o1 - o0), streams[t], db, bp.data_ptr(), Y + (n * OH + o0) * OW * O,
                     res ? X + (n * H + o0) * W * C : nullptr, sp);
            }
        }
    };
    dnnl::stream s(eng());
    auto run_layers = [&]() {
        exec(c1, s, x.data_ptr(), be.data_ptr(), mid.data_ptr(), nullptr, nullptr);
        exec(c2, s, mid.data_ptr(), bd.data_ptr(), mid2.data_ptr(), nullptr, nullptr);
        exec(c3, s, mid2.data_ptr(), bp.data_ptr(), y_layers.data_ptr(), res ? x.data_ptr() : nullptr, nullptr);
        s.wait();
    };
    std::vector<double> tl, tb;
    for (int64_t i = 0; i < iters + 5; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        run_layers();
        auto t1 = std::chrono::steady_clock::now();
        run_bands();
        auto t2 = std::chrono::steady_clock::now();
        if (i >= 5) {
            tl.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
            tb.push_back(std::chrono::duration<double, std::micro>(t2 - t1).count());
        }
    }
    pybind11::dict d;
    d["layers"] = y_layers;
    d["bands"] = y_bands;
    d["t_layers"] = tl;
    d["t_bands"] = tb;
    d["impl"] = std::string(c1.pd.impl_info_str()) + " | " + c2.pd.impl_info_str() + " | " + c3.pd.impl_info_str();
    d["impl_bands"] = std::string(ex.begin()->second.pd.impl_info_str()) + " | " + dw.begin()->second.pd.impl_info_str() +
                      " | " + pr.begin()->second.pd.impl_info_str();
    d["ebuf_kb"] = erows * W * E * 4 / 1024;
    return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("bench", &bench, "inverted residual block: layers against bands"); }
