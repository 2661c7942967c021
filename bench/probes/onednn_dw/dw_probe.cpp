// Probe: oneDNN's depthwise post-op (append_dw) against the two primitives Ember runs today.
//
// For one MobileNet expand -> depthwise pair (1x1 stride-1 convolution with ReLU6, then a 3x3
// depthwise convolution, pad 1, stride 1 or 2, with ReLU6; NHWC activations), ``bench`` makes
//   separate: the 1x1 primitive (clip post-op) writing the expanded tensor, then the depthwise
//             primitive (clip post-op) reading it, as Ember's onednn_persistent tactic runs them;
//   fused:    one 1x1 primitive whose post-ops are clip, append_dw(3x3, stride, pad 1), clip; the
//             depthwise weights and bias are the arguments DNNL_ARG_ATTR_POST_OP_DW | WEIGHTS /
//             BIAS, in the layouts the primitive descriptor reports for them (exec_arg_md).
// fp32, or INT8 (u8 activations, s8 weights with per-output-channel scales, per-tensor source,
// intermediate and output scales, zero points 0). INT8 scales of the fused form: SRC / WEIGHTS /
// DST of the 1x1 (its DST scale is also the depthwise's source scale), then
// DNNL_ARG_ATTR_POST_OP_DW | WEIGHTS (mask `dw_mask`) and DNNL_ARG_ATTR_POST_OP_DW | DST.
// It times `iters` executions of each (after `warmup`, taking turns) and returns both outputs,
// the per-call times, the implementation oneDNN picked for each primitive and every
// implementation that accepts the fused descriptor (`accepted`, in oneDNN's order);
// `skip_ref` passes over ref_fused_convolution (oneDNN running the two primitives one after the
// other through a scratchpad: no fusion). Variants: `act` (clip, relu, none), `blocked` (fp32
// activations nChw16c instead of NHWC). Built by probe.py against the libdnnl Ember's extension
// uses.
#include <oneapi/dnnl/dnnl.hpp>
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <chrono>
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

memory plain(const memory::desc &md, const torch::Tensor &t) { return memory(md, eng(), t.data_ptr()); }

// `src` (a plain tensor in layout `user`) reordered into the primitive's layout `want`.
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

memory scalars(const torch::Tensor &t) { return plain(memory::desc({t.numel()}, dt::f32, tag::x), t); }

double run(dnnl::primitive &p, Args &args, dnnl::stream &s) {
    auto t0 = std::chrono::steady_clock::now();
    p.execute(s, args);
    s.wait();
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

pybind11::dict bench(const torch::Tensor &x, const torch::Tensor &w1, const torch::Tensor &b1,
                     const torch::Tensor &w2, const torch::Tensor &b2, int64_t stride, const torch::Tensor &ws1,
                     const torch::Tensor &ws2, double s_x, double s_mid, double s_out, double lo, double hi,
                     int64_t iters, int64_t warmup, bool skip_ref,
                     const std::string &act, int64_t dw_mask, bool blocked) {
    at::internal::lazy_init_num_threads();
    const bool int8 = w1.scalar_type() == at::kChar;
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OC = w1.size(0);
    const int64_t OH = (H + 2 - 3) / stride + 1, OW = (W + 2 - 3) / stride + 1;
    const dt adt = int8 ? dt::u8 : dt::f32, wdt = int8 ? dt::s8 : dt::f32;
    TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "x must be channels-last");
    auto opts = x.options().memory_format(at::MemoryFormat::ChannelsLast);
    torch::Tensor mid = torch::empty({N, OC, H, W}, opts);
    torch::Tensor out_sep = torch::empty({N, OC, OH, OW}, opts), out_fused = torch::empty({N, OC, OH, OW}, opts);
    torch::Tensor x_in = x;
    std::vector<torch::Tensor> keep;
    torch::Tensor sx = torch::full({1}, s_x), smid = torch::full({1}, s_mid), sout = torch::full({1}, s_out);

    const tag at = blocked ? tag::nChw16c : tag::nhwc;
    memory::desc x_md({N, C, H, W}, adt, at), mid_md({N, OC, H, W}, adt, at),
        out_md({N, OC, OH, OW}, adt, at), b_md({OC}, dt::f32, tag::x);
    auto bytes = [](const memory::desc &md) {
        return torch::empty({static_cast<int64_t>(md.get_size())}, torch::kUInt8);
    };
    torch::Tensor ob_sep = out_sep, ob_fused = out_fused;
    if (blocked) {  // NHWC tensors in and out, blocked buffers for the primitives
        x_in = bytes(x_md);
        memory from(memory::desc({N, C, H, W}, adt, tag::nhwc), eng(), x.data_ptr()), to(x_md, eng(), x_in.data_ptr());
        dnnl::stream s0(eng());
        dnnl::reorder(from, to).execute(s0, from, to);
        s0.wait();
        mid = bytes(mid_md);
        ob_sep = bytes(out_md);
        ob_fused = bytes(out_md);
    }
    memory::desc w1_any({OC, C, 1, 1}, wdt, tag::any), w2_any({OC, 1, 1, 3, 3}, wdt, tag::any);
    memory::desc w1_user({OC, C, 1, 1}, wdt, tag::oihw), w2_user({OC, 1, 1, 3, 3}, wdt, tag::goihw);
    const auto fwd = dnnl::prop_kind::forward_inference;
    const auto direct = dnnl::algorithm::convolution_direct;
    // act: the activations' eltwise (clip [lo, hi], relu); blocked: fp32 activations in the layout
    // oneDNN prefers (tag any) instead of NHWC; dw_mask: the INT8 depthwise weights' scale mask
    const auto clip = act == "relu" ? dnnl::algorithm::eltwise_relu : dnnl::algorithm::eltwise_clip;
    const float flo = static_cast<float>(lo), fhi = static_cast<float>(hi);

    // separate: 1x1 + clip
    dnnl::primitive_attr a1;
    dnnl::post_ops p1;
    p1.append_eltwise(clip, flo, fhi);
    a1.set_post_ops(p1);
    if (act == "none") p1 = dnnl::post_ops();
    a1.set_post_ops(p1);
    if (int8) {
        a1.set_scales_mask(DNNL_ARG_SRC, 0);
        a1.set_scales_mask(DNNL_ARG_WEIGHTS, 1);
        a1.set_scales_mask(DNNL_ARG_DST, 0);
    }
    dnnl::convolution_forward::primitive_desc pd1(eng(), fwd, direct, x_md, w1_any, b_md, mid_md, {1, 1}, {0, 0},
                                                  {0, 0}, {0, 0}, a1);
    // separate: depthwise 3x3 + clip
    dnnl::primitive_attr a2;
    a2.set_post_ops(p1);
    if (int8) {
        a2.set_scales_mask(DNNL_ARG_SRC, 0);
        a2.set_scales_mask(DNNL_ARG_WEIGHTS, 3);
        a2.set_scales_mask(DNNL_ARG_DST, 0);
    }
    dnnl::convolution_forward::primitive_desc pd2(eng(), fwd, direct, mid_md, w2_any, b_md, out_md,
                                                  {stride, stride}, {0, 0}, {1, 1},
                                                  {(OH - 1) * stride + 3 - H - 1, (OW - 1) * stride + 3 - W - 1}, a2);
    // fused: 1x1 + clip + dw(3x3, stride, pad 1) + clip
    dnnl::primitive_attr af;
    dnnl::post_ops pf;
    if (act != "none") pf.append_eltwise(clip, flo, fhi);
    pf.append_dw(wdt, dt::f32, adt, 3, stride, 1);
    if (act != "none") pf.append_eltwise(clip, flo, fhi);
    af.set_post_ops(pf);
    if (int8) {
        af.set_scales_mask(DNNL_ARG_SRC, 0);
        af.set_scales_mask(DNNL_ARG_WEIGHTS, 1);
        af.set_scales_mask(DNNL_ARG_DST, 0);
        af.set_scales_mask(DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS, static_cast<int>(dw_mask));
        af.set_scales_mask(DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_DST, 0);
    }
    auto make_fused = [&]() {
        return dnnl::convolution_forward::primitive_desc(eng(), fwd, direct, x_md, w1_any, b_md, mid_md, {1, 1},
                                                         {0, 0}, {0, 0}, {0, 0}, af);
    };
    auto pdf = make_fused();
    // every implementation that accepts the fused descriptor, in oneDNN's order; with `skip_ref`
    // the first one that is not ref_fused_convolution (two primitives run one after the other)
    std::vector<std::string> accepted{pdf.impl_info_str()};
    {
        auto it = make_fused();
        while (it.next_impl()) accepted.push_back(it.impl_info_str());
    }
    if (skip_ref) {
        while (std::string(pdf.impl_info_str()).rfind("ref_fused", 0) == 0)
            TORCH_CHECK(pdf.next_impl(), "no implementation but ref_fused_convolution takes the fused descriptor");
    }
    memory::desc fdst = pdf.dst_desc();
    memory::desc fw2 = pdf.query_md(dnnl::query::exec_arg_md, DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS);
    memory::desc fb2 = pdf.query_md(dnnl::query::exec_arg_md, DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_BIAS);

    Args args1{{DNNL_ARG_SRC, plain(x_md, x_in)}, {DNNL_ARG_WEIGHTS, packed(pd1.weights_desc(), w1_user, w1, keep)},
               {DNNL_ARG_BIAS, plain(b_md, b1)}, {DNNL_ARG_DST, plain(mid_md, mid)}};
    Args args2{{DNNL_ARG_SRC, plain(mid_md, mid)}, {DNNL_ARG_WEIGHTS, packed(pd2.weights_desc(), w2_user, w2, keep)},
               {DNNL_ARG_BIAS, plain(b_md, b2)}, {DNNL_ARG_DST, plain(out_md, ob_sep)}};
    Args argsf{{DNNL_ARG_SRC, plain(x_md, x_in)}, {DNNL_ARG_WEIGHTS, packed(pdf.weights_desc(), w1_user, w1, keep)},
               {DNNL_ARG_BIAS, plain(b_md, b1)}, {DNNL_ARG_DST, plain(fdst, ob_fused)},
               {DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS, packed(fw2, w2_user, w2, keep)},
               {DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_BIAS, plain(fb2, b2)}};
    if (int8) {
        args1.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, scalars(sx));
        args1.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, scalars(ws1));
        args1.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST, scalars(smid));
        args2.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, scalars(smid));
        args2.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, scalars(ws2));
        args2.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST, scalars(sout));
        argsf.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, scalars(sx));
        argsf.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, scalars(ws1));
        argsf.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST, scalars(smid));
        argsf.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS, scalars(ws2));
        argsf.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_DST, scalars(sout));
    }
    dnnl::convolution_forward c1(pd1), c2(pd2), cf(pdf);
    dnnl::stream s(eng());
    std::vector<double> t1, t2, tf;
    for (int64_t i = 0; i < warmup + iters; ++i) {  // taking turns: separate pair, then fused
        double a = run(c1, args1, s), b = run(c2, args2, s), f = run(cf, argsf, s);
        if (i >= warmup) {
            t1.push_back(a);
            t2.push_back(b);
            tf.push_back(f);
        }
    }
    if (blocked) {
        for (auto pr : {std::make_pair(ob_sep, out_sep), std::make_pair(ob_fused, out_fused)}) {
            memory from(out_md, eng(), pr.first.data_ptr());
            memory to(memory::desc({N, OC, OH, OW}, adt, tag::nhwc), eng(), pr.second.data_ptr());
            dnnl::reorder(from, to).execute(s, from, to);
            s.wait();
        }
    }
    auto dims = fdst.get_dims();
    pybind11::dict d;
    d["separate"] = out_sep;
    d["fused"] = out_fused;
    d["t_1x1"] = t1;
    d["t_dw"] = t2;
    d["t_fused"] = tf;
    d["impl_1x1"] = pd1.impl_info_str();
    d["impl_dw"] = pd2.impl_info_str();
    d["impl_fused"] = pdf.impl_info_str();
    d["accepted"] = accepted;
    d["fused_dst_dims"] = std::vector<int64_t>(dims.begin(), dims.end());
    return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bench", &bench, "separate 1x1 + depthwise primitives against one fused (append_dw) primitive");
}
