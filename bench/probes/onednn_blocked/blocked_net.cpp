// A whole CNN's convolution chain as persistent oneDNN primitives, in a chosen activation layout:
// the probe for issue 19's "keep activations in oneDNN's blocked formats" lever.
//
// `Net(layout)` is built op by op from Python (`add_input`, `add_conv`, `add_pool`, `finish`) in
// execution order, as Ember's plan lists its layers. Every convolution is one oneDNN primitive
// created once, its weights reordered once into the layout the primitive asks for (format `any`),
// with the layer's fused epilogue as post-ops (residual: a binary add reading the residual
// tensor; then ReLU / clip), as Ember's `onednn_persistent` tactic does. What differs between
// layouts is the activations':
//
//   nhwc     src / dst `nhwc` (Ember today); the NCHW image is reordered to NHWC first
//   any      src / dst `format_tag::any`: oneDNN picks (nChw16c on AVX-512 where its kernels want it)
//   blocked  src / dst `nChw16c` (the 3-channel image: src `nchw`), as ONNX Runtime's NCHWc
//
// Where a consumer wants a tensor in another layout than its producer wrote (the image, a
// residual, `any` picking differently from one layer to the next), a reorder primitive is
// inserted and timed as an op of its own. Buffers are reused as an arena would: a tensor's buffer
// goes back to a pool after its last reader ran (best fit by size), so the chain touches as much
// memory as a real run, not one fresh buffer per tensor.
//
// Timing is done here, in C++, with std::chrono around each primitive's execute (oneDNN's CPU
// stream with OpenMP is synchronous): whole-chain times, each op's time inside the chain (cold as
// in a real run), and each op repeated alone (hot).
#include <oneapi/dnnl/dnnl.hpp>
#include <torch/extension.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#if DNNL_CPU_RUNTIME == DNNL_RUNTIME_SYCL || DNNL_CPU_RUNTIME == DNNL_RUNTIME_NONE
#error "this libdnnl has no plain CPU engine (DNNL_CPU_RUNTIME is SYCL or none): use an OpenMP build"
#endif

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using clk = std::chrono::steady_clock;

dnnl::engine &cpu_engine() {
    static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
    return eng;
}

// A short name for a 4-D f32 descriptor's layout: nchw, nhwc, nChw16c, nChw8c, or the raw blocking.
std::string layout_name(const memory::desc &md) {
    if (md.get_ndims() != 4) return "?";
    const auto d = md.get_dims();
    const std::pair<const char *, tag> known[] = {{"nchw", tag::nchw},       {"nhwc", tag::nhwc},
                                                  {"nChw16c", tag::nChw16c}, {"nChw8c", tag::nChw8c},
                                                  {"nChw4c", tag::nChw4c}};
    for (const auto &k : known)
        if (md == memory::desc(d, md.get_data_type(), k.second)) return k.first;
    std::ostringstream s;
    s << "blk(";
    for (auto b : md.get_inner_blks()) s << b << ",";
    s << ";";
    for (auto i : md.get_inner_idxs()) s << i << ",";
    s << ")";
    return s.str();
}

struct Tensor {
    memory::desc md;
    int producer = -1;  // op index; -1: the user's input
    int last_use = -1;  // op index of the last reader
    int buffer = -1;    // index into Net::buffers_
};

struct Op {
    std::string name, kind;  // kind: conv, pool, reorder
    dnnl::primitive prim;
    std::string impl, candidates;
    int sum_from = -1;  // residual tensor whose buffer the output overwrites (sum post-op)
    std::vector<int> inputs;  // tensor ids: src (, residual)
    int output = -1;
    std::unordered_map<int, memory> args;  // with data handles set at finish()
    std::vector<std::pair<int, int>> arg_tensor;  // (DNNL_ARG_*, tensor id)
    memory weights, bias, scratch;
    double flops = 0;
};

class Net {
   public:
    // residual: "binary" (a binary-add post-op reads the residual tensor, as Ember does) or "sum"
    // (the output is written over the residual's buffer and oneDNN's sum post-op accumulates onto
    // it, as ONNX Runtime's fused Conv+Add does; the residual's last reader must be that layer).
    explicit Net(std::string layout, std::string residual = "binary")
        : layout_(std::move(layout)), residual_mode_(std::move(residual)) {
        TORCH_CHECK_VALUE(layout_ == "nhwc" || layout_ == "any" || layout_ == "blocked",
                          "layout must be nhwc, any or blocked, got '", layout_, "'");
        TORCH_CHECK_VALUE(residual_mode_ == "binary" || residual_mode_ == "sum",
                          "residual must be binary or sum, got '", residual_mode_, "'");
    }

    // The model's input: an NCHW f32 image of `dims`; returns its tensor id.
    int add_input(std::vector<int64_t> dims) {
        TORCH_CHECK_VALUE(dims.size() == 4 && input_ < 0, "one 4-D input [N, C, H, W]");
        input_ = new_tensor(memory::desc(memory::dims(dims.begin(), dims.end()), dt::f32, tag::nchw), -1);
        return input_;
    }

    // A convolution of tensor `src` (weight f32 [O, I/g, kh, kw], bias [O] or None) with its fused
    // epilogue: optional residual tensor added (binary post-op), then none / relu / clip(alpha, beta).
    // `impl`: the oneDNN implementation to use: an `impl_info_str()` of one of the layer's candidates
    // (listed in info()["candidates"]) or "#k", the k-th of them; empty: oneDNN's first choice.
    int add_conv(const std::string &name, int src, torch::Tensor weight, c10::optional<torch::Tensor> bias,
                 std::vector<int64_t> strides, std::vector<int64_t> pad_l, std::vector<int64_t> pad_r,
                 std::vector<int64_t> dilations, int64_t groups, const std::string &activation, double alpha,
                 double beta, int residual, const std::string &impl) {
        check_open(name);
        check_id(src, name);
        TORCH_CHECK_VALUE(weight.dim() == 4 && weight.scalar_type() == at::kFloat, "layer '", name,
                          "': weight must be float32 [O, I/groups, kh, kw], got ", weight.sizes());
        const auto sd = tensors_[src].md.get_dims();
        const int64_t oc = weight.size(0), kh = weight.size(2), kw = weight.size(3);
        TORCH_CHECK_VALUE(groups >= 1 && sd[1] == weight.size(1) * groups && oc % groups == 0, "layer '", name,
                          "': input has ", sd[1], " channels, weight ", weight.sizes(), " with ", groups, " groups");
        auto out_size = [&](int i) {
            int64_t k = (i == 0 ? kh : kw);
            return (sd[2 + i] + pad_l[i] + pad_r[i] - ((k - 1) * dilations[i] + 1)) / strides[i] + 1;
        };
        memory::dims dd{sd[0], oc, out_size(0), out_size(1)};
        TORCH_CHECK_VALUE(dd[2] > 0 && dd[3] > 0, "layer '", name, "': empty output");
        memory::dims wd = groups == 1 ? memory::dims{oc, weight.size(1), kh, kw}
                                      : memory::dims{groups, oc / groups, weight.size(1), kh, kw};
        memory::dims dil{dilations[0] - 1, dilations[1] - 1};
        memory::desc src_md(sd, dt::f32, want_tag(sd[1], true));
        memory::desc dst_md(dd, dt::f32, want_tag(oc, false));
        memory::desc wei_md(wd, dt::f32, tag::any), bias_md({oc}, dt::f32, tag::x);

        auto make_pd = [&](const memory::desc &dst, const memory::desc *res) {
            dnnl::primitive_attr attr;
            attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
            dnnl::post_ops po;
            if (res && residual_mode_ == "sum")
                po.append_sum(1.f);
            else if (res)
                po.append_binary(dnnl::algorithm::binary_add, *res);
            if (activation == "relu")
                po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
            else if (activation == "clip")
                po.append_eltwise(dnnl::algorithm::eltwise_clip, static_cast<float>(alpha), static_cast<float>(beta));
            else
                TORCH_CHECK_VALUE(activation == "none", "layer '", name, "': activation none / relu / clip, got '",
                                  activation, "'");
            attr.set_post_ops(po);
            return dnnl::convolution_forward::primitive_desc(
                cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src_md, wei_md,
                bias_md, dst, memory::dims{strides[0], strides[1]}, dil, memory::dims{pad_l[0], pad_l[1]},
                memory::dims{pad_r[0], pad_r[1]}, attr);
        };
        memory::desc out_md = dst_md;
        if (residual >= 0) {
            check_id(residual, name);
            // the residual is read in the layout the output is written in: learn that layout first
            if (dst_md.get_format_kind() == memory::format_kind::any) out_md = make_pd(dst_md, nullptr).dst_desc();
        }
        auto fresh = [&]() { return residual >= 0 ? make_pd(out_md, &out_md) : make_pd(dst_md, nullptr); };
        // every implementation oneDNN offers for this layer, in its order of preference
        std::vector<std::string> candidates;
        {
            auto it = fresh();
            do candidates.push_back(it.impl_info_str());
            while (it.next_impl());
        }
        auto pd = fresh();
        if (!impl.empty() && impl[0] == '#') {  // "#k": the k-th candidate (names can repeat)
            const int k = std::stoi(impl.substr(1));
            TORCH_CHECK_VALUE(k >= 0 && k < static_cast<int>(candidates.size()), "layer '", name, "': implementation ",
                              impl, " out of ", candidates.size(), " candidates");
            for (int i = 0; i < k; ++i) pd.next_impl();
        } else if (!impl.empty()) {
            while (pd.impl_info_str() != impl) {
                if (!pd.next_impl()) {
                    std::string all;
                    for (const auto &c : candidates) all += (all.empty() ? "" : ", ") + c;
                    TORCH_CHECK_VALUE(false, "layer '", name, "': oneDNN has no implementation '", impl,
                                      "' for it in this layout; it has: ", all);
                }
            }
        }
        Op op;
        op.name = name;
        op.kind = "conv";
        op.prim = dnnl::convolution_forward(pd);
        op.impl = pd.impl_info_str();
        for (const auto &c : candidates) op.candidates += (op.candidates.empty() ? "" : ";") + c;
        op.flops = 2.0 * dd[0] * dd[1] * dd[2] * dd[3] * weight.size(1) * kh * kw;
        // weights and bias: reordered / copied once
        auto &eng = cpu_engine();
        torch::Tensor w = weight.contiguous();
        memory user_w(memory::desc(wd, dt::f32, groups == 1 ? tag::oihw : tag::goihw), eng, w.data_ptr());
        op.weights = memory(pd.weights_desc(), eng);
        dnnl::stream s(eng);
        dnnl::reorder(user_w, op.weights).execute(s, user_w, op.weights);
        op.bias = memory(bias_md, eng);
        float *b = static_cast<float *>(op.bias.get_data_handle());
        if (bias) {
            torch::Tensor bt = bias->to(torch::kFloat).contiguous().reshape({-1});
            TORCH_CHECK_VALUE(bt.numel() == oc, "layer '", name, "': bias has ", bt.numel(), " values for ", oc);
            std::copy(bt.data_ptr<float>(), bt.data_ptr<float>() + oc, b);
        } else {
            std::fill(b, b + oc, 0.f);
        }
        s.wait();
        op.scratch = memory(pd.scratchpad_desc(), eng);
        op.args[DNNL_ARG_WEIGHTS] = op.weights;
        op.args[DNNL_ARG_BIAS] = op.bias;
        op.args[DNNL_ARG_SCRATCHPAD] = op.scratch;
        const int x = as_layout(src, pd.src_desc(), name);
        op.inputs.push_back(x);
        op.arg_tensor.push_back({DNNL_ARG_SRC, x});
        if (residual >= 0) {
            const int r = as_layout(residual, pd.dst_desc(), name + "/residual");
            op.inputs.push_back(r);
            if (residual_mode_ == "sum")
                op.sum_from = r;  // finish() puts the output in r's buffer
            else
                op.arg_tensor.push_back({DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, r});
        }
        return push(std::move(op), pd.dst_desc());
    }

    // Max or average pooling of `src` (GlobalAveragePool: kernel = the input's H x W).
    int add_pool(const std::string &name, int src, const std::string &kind, std::vector<int64_t> kernel,
                 std::vector<int64_t> strides, std::vector<int64_t> pad_l, std::vector<int64_t> pad_r) {
        check_open(name);
        check_id(src, name);
        TORCH_CHECK_VALUE(kind == "max" || kind == "avg", "layer '", name, "': pooling kind max or avg");
        const memory::desc &in = tensors_[src].md;
        const auto sd = in.get_dims();
        auto out_size = [&](int i) { return (sd[2 + i] + pad_l[i] + pad_r[i] - kernel[i]) / strides[i] + 1; };
        memory::dims dd{sd[0], sd[1], out_size(0), out_size(1)};
        // the pooling reads its producer's layout as it is; the output follows the net's layout
        memory::desc dst_md(dd, dt::f32, layout_ == "nhwc" ? tag::nhwc : (layout_ == "blocked" ? tag::nChw16c : tag::any));
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        auto pd = dnnl::pooling_forward::primitive_desc(
            cpu_engine(), dnnl::prop_kind::forward_inference,
            kind == "max" ? dnnl::algorithm::pooling_max : dnnl::algorithm::pooling_avg_exclude_padding, in, dst_md,
            memory::dims(strides.begin(), strides.end()), memory::dims(kernel.begin(), kernel.end()),
            memory::dims{0, 0}, memory::dims(pad_l.begin(), pad_l.end()), memory::dims(pad_r.begin(), pad_r.end()),
            attr);
        Op op;
        op.name = name;
        op.kind = "pool";
        op.prim = dnnl::pooling_forward(pd);
        op.impl = pd.impl_info_str();
        op.scratch = memory(pd.scratchpad_desc(), cpu_engine());
        op.args[DNNL_ARG_SCRATCHPAD] = op.scratch;
        const int x = as_layout(src, pd.src_desc(), name);
        op.inputs.push_back(x);
        op.arg_tensor.push_back({DNNL_ARG_SRC, x});
        return push(std::move(op), pd.dst_desc());
    }

    // Ends the net at tensor `out` (reordered to NCHW for the user) and lays out the buffers:
    // reused after each tensor's last reader (`reuse`, as an arena), or one buffer per tensor.
    void finish(int out, bool reuse) {
        check_open("finish");
        check_id(out, "finish");
        output_ = as_layout(out, memory::desc(tensors_[out].md.get_dims(), dt::f32, tag::nchw), "output");
        tensors_[output_].last_use = static_cast<int>(ops_.size());  // read by the user
        // arena: a tensor's buffer is reused once its last reader has run (best fit by size)
        std::vector<bool> busy;
        auto take = [&](size_t bytes) {
            int best = -1;
            for (size_t i = 0; i < buffers_.size(); ++i)
                if (!busy[i] && buffers_[i].get_desc().get_size() >= bytes &&
                    (best < 0 || buffers_[i].get_desc().get_size() < buffers_[best].get_desc().get_size()))
                    best = static_cast<int>(i);
            if (best < 0) {
                buffers_.push_back(memory(memory::desc({static_cast<int64_t>(std::max<size_t>(bytes, 64))}, dt::u8,
                                                       tag::x),
                                          cpu_engine()));
                busy.push_back(false);
                best = static_cast<int>(buffers_.size()) - 1;
            }
            busy[best] = true;
            return best;
        };
        tensors_[input_].buffer = -1;  // the user's tensor
        std::vector<bool> handed(tensors_.size(), false);  // buffers passed on to a sum post-op's output
        for (size_t i = 0; i < ops_.size(); ++i) {
            Op &op = ops_[i];
            Tensor &o = tensors_[op.output];
            if (op.sum_from >= 0) {
                Tensor &r = tensors_[op.sum_from];
                TORCH_CHECK_VALUE(r.buffer >= 0 && r.last_use == static_cast<int>(i) &&
                                      buffers_[r.buffer].get_desc().get_size() >= o.md.get_size(),
                                  "layer '", op.name, "': the sum post-op writes over its residual, which must be "
                                  "read by no later layer (and not be the net's input); use residual='binary'");
                o.buffer = r.buffer;  // stays busy: it is the output's now
                handed[op.sum_from] = true;
            } else {
                o.buffer = take(o.md.get_size());
            }
            for (int t : op.inputs)
                if (reuse && tensors_[t].last_use == static_cast<int>(i) && tensors_[t].buffer >= 0 && !handed[t])
                    busy[tensors_[t].buffer] = false;
        }
        for (auto &op : ops_) {  // (DNNL_ARG_FROM / TO of a reorder are DNNL_ARG_SRC / DST)
            op.arg_tensor.push_back({DNNL_ARG_DST, op.output});
            for (auto &[arg, t] : op.arg_tensor) op.args[arg] = memory(tensors_[t].md, cpu_engine(), DNNL_MEMORY_NONE);
        }
        bind(nullptr);
        finished_ = true;
    }

    // Copies `x` (NCHW f32 of the input's shape) in as the input.
    void set_input(const torch::Tensor &x) {
        check_done();
        const auto d = tensors_[input_].md.get_dims();
        TORCH_CHECK_VALUE(x.dim() == 4 && x.scalar_type() == at::kFloat && x.size(0) == d[0] && x.size(1) == d[1] &&
                              x.size(2) == d[2] && x.size(3) == d[3],
                          "input must be float32 ", memory::dims(d), ", got ", x.scalar_type(), " ", x.sizes());
        input_buf_ = x.contiguous().clone();
        bind(input_buf_.data_ptr());
    }

    // One run of the whole chain; returns the output (NCHW).
    torch::Tensor run() {
        check_input();
        dnnl::stream s(cpu_engine());
        for (auto &op : ops_) op.prim.execute(s, op.args);
        s.wait();
        const auto d = tensors_[output_].md.get_dims();
        torch::Tensor out = torch::empty({d[0], d[1], d[2], d[3]}, torch::kFloat);
        const memory &m = buffers_[tensors_[output_].buffer];
        std::memcpy(out.data_ptr(), m.get_data_handle(), tensors_[output_].md.get_size());
        return out;
    }

    // `iters` runs of the whole chain (after `warmup`); per run: total ns and each op's ns.
    std::pair<std::vector<double>, std::vector<std::vector<double>>> time_chain(int iters, int warmup) {
        check_input();
        dnnl::stream s(cpu_engine());
        std::vector<double> total;
        std::vector<std::vector<double>> per(ops_.size());
        for (int it = -warmup; it < iters; ++it) {
            const auto t0 = clk::now();
            auto prev = t0;
            for (size_t i = 0; i < ops_.size(); ++i) {
                ops_[i].prim.execute(s, ops_[i].args);
                s.wait();
                const auto now = clk::now();
                if (it >= 0) per[i].push_back(std::chrono::duration<double, std::nano>(now - prev).count());
                prev = now;
            }
            if (it >= 0) total.push_back(std::chrono::duration<double, std::nano>(prev - t0).count());
        }
        return {total, per};
    }

    // Each op alone, `reps` times in a row after 3 warm-up calls (hot caches): per op, ns per call
    // of each of `blocks` blocks.
    std::vector<std::vector<double>> time_isolated(int blocks, int reps) {
        check_input();
        dnnl::stream s(cpu_engine());
        std::vector<std::vector<double>> per(ops_.size());
        for (size_t i = 0; i < ops_.size(); ++i) {
            for (int w = 0; w < 3; ++w) ops_[i].prim.execute(s, ops_[i].args);
            s.wait();
            for (int b = 0; b < blocks; ++b) {
                const auto t0 = clk::now();
                for (int r = 0; r < reps; ++r) ops_[i].prim.execute(s, ops_[i].args);
                s.wait();
                per[i].push_back(std::chrono::duration<double, std::nano>(clk::now() - t0).count() / reps);
            }
        }
        return per;
    }

    // Per op: name, kind, implementation, src / dst layouts, dims, GFLOP.
    std::vector<std::unordered_map<std::string, std::string>> info() const {
        std::vector<std::unordered_map<std::string, std::string>> out;
        for (const auto &op : ops_) {
            const auto &src = tensors_[op.inputs[0]].md, &dst = tensors_[op.output].md;
            std::ostringstream sd, dd;
            for (auto v : src.get_dims()) sd << v << "x";
            for (auto v : dst.get_dims()) dd << v << "x";
            out.push_back({{"name", op.name}, {"kind", op.kind}, {"impl", op.impl},
                           {"src", layout_name(src)}, {"dst", layout_name(dst)}, {"candidates", op.candidates},
                           {"src_dims", sd.str()}, {"dst_dims", dd.str()},
                           {"gflop", std::to_string(op.flops / 1e9)}});
        }
        return out;
    }

    int64_t arena_bytes() const {
        int64_t n = 0;
        for (const auto &b : buffers_) n += static_cast<int64_t>(b.get_desc().get_size());
        return n;
    }

   private:
    std::string layout_, residual_mode_;
    std::vector<Tensor> tensors_;
    std::vector<Op> ops_;
    std::vector<memory> buffers_;
    std::unordered_map<std::string, int> converted_;  // "tensor:layout" -> reordered tensor
    int input_ = -1, output_ = -1;
    bool finished_ = false, bound_input_ = false;
    torch::Tensor input_buf_;

    tag want_tag(int64_t channels, bool is_src) const {
        if (layout_ == "nhwc") return tag::nhwc;
        if (layout_ == "any") return tag::any;
        return (is_src && channels < 8) ? tag::nchw : tag::nChw16c;  // the image stays planar, as in ORT
    }

    int new_tensor(const memory::desc &md, int producer) {
        tensors_.push_back(Tensor{md, producer, -1, -1});
        return static_cast<int>(tensors_.size()) - 1;
    }

    // `t` as laid out by `md`: itself, or a reorder op's output (one per tensor and layout).
    int as_layout(int t, const memory::desc &md, const std::string &who) {
        int id = t;
        if (!(tensors_[t].md == md)) {
            const std::string key = std::to_string(t) + ":" + layout_name(md);
            auto it = converted_.find(key);
            if (it != converted_.end()) {
                id = it->second;
            } else {
                Op op;
                op.name = "reorder " + layout_name(tensors_[t].md) + "->" + layout_name(md) + " for " + who;
                op.kind = "reorder";
                auto pd = dnnl::reorder::primitive_desc(cpu_engine(), tensors_[t].md, cpu_engine(), md);
                op.prim = dnnl::reorder(pd);
                op.impl = pd.impl_info_str();
                op.inputs.push_back(t);
                op.arg_tensor.push_back({DNNL_ARG_FROM, t});
                id = push(std::move(op), md);
                converted_[key] = id;
            }
        }
        return id;
    }

    int push(Op op, const memory::desc &dst) {
        const int index = static_cast<int>(ops_.size());
        for (int t : op.inputs) tensors_[t].last_use = index;  // ops are pushed in execution order
        const int out = new_tensor(dst, index);
        op.output = out;
        ops_.push_back(std::move(op));
        return out;
    }

    // Points every op's memory objects at the arena buffers (and the input at `input`, if given).
    void bind(void *input) {
        for (auto &op : ops_)
            for (auto &[arg, t] : op.arg_tensor) {
                void *h = tensors_[t].buffer >= 0 ? buffers_[tensors_[t].buffer].get_data_handle() : input;
                if (h) op.args[arg].set_data_handle(h);
            }
        if (input) bound_input_ = true;
    }

    void check_open(const std::string &who) const {
        TORCH_CHECK_VALUE(!finished_, who, ": the net is finished; build a new Net");
        TORCH_CHECK_VALUE(input_ >= 0, who, ": add_input first");
    }
    void check_id(int t, const std::string &who) const {
        TORCH_CHECK_VALUE(t >= 0 && t < static_cast<int>(tensors_.size()), "layer '", who, "': no tensor ", t);
    }
    void check_done() const { TORCH_CHECK_VALUE(finished_, "call finish(output) first"); }
    void check_input() const {
        check_done();
        TORCH_CHECK_VALUE(bound_input_, "call set_input(x) first");
    }
};

pybind11::dict version() {
    const auto *v = dnnl::version();
    pybind11::dict d;
    d["major"] = v->major;
    d["minor"] = v->minor;
    d["patch"] = v->patch;
    d["hash"] = std::string(v->hash);
    d["header_version"] = std::to_string(DNNL_VERSION_MAJOR) + "." + std::to_string(DNNL_VERSION_MINOR) + "." +
                          std::to_string(DNNL_VERSION_PATCH);
    d["max_isa"] = static_cast<int>(dnnl::get_effective_cpu_isa());
    return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "A CNN's convolution chain as persistent oneDNN primitives in NHWC or blocked layouts (issue 19 probe)";
    m.def("version", &version);
    pybind11::class_<Net>(m, "Net")
        .def(pybind11::init<std::string, std::string>(), pybind11::arg("layout"), pybind11::arg("residual") = "binary")
        .def("add_input", &Net::add_input)
        .def("add_conv", &Net::add_conv, pybind11::arg("name"), pybind11::arg("src"), pybind11::arg("weight"),
             pybind11::arg("bias"), pybind11::arg("strides"), pybind11::arg("pad_l"), pybind11::arg("pad_r"),
             pybind11::arg("dilations"), pybind11::arg("groups"), pybind11::arg("activation") = "none",
             pybind11::arg("alpha") = 0.0, pybind11::arg("beta") = 0.0, pybind11::arg("residual") = -1,
             pybind11::arg("impl") = "")
        .def("add_pool", &Net::add_pool)
        .def("finish", &Net::finish, pybind11::arg("output"), pybind11::arg("reuse") = true)
        .def("set_input", &Net::set_input)
        .def("run", &Net::run, pybind11::call_guard<pybind11::gil_scoped_release>())
        .def("time_chain", &Net::time_chain, pybind11::call_guard<pybind11::gil_scoped_release>())
        .def("time_isolated", &Net::time_isolated, pybind11::call_guard<pybind11::gil_scoped_release>())
        .def("info", &Net::info)
        .def("arena_bytes", &Net::arena_bytes);
}
