// Persistent oneDNN convolutions: the probe for issue 19's "persistent primitives" lever.
//
// A `Conv` creates its oneDNN convolution primitive once (weights reordered once into the
// primitive's preferred layout, scales / zero points / bias in place, a user scratchpad allocated
// once) and `run(x, out[, residual])` only points the primitive's memory objects at the tensors'
// data and executes it. PyTorch's entry points (`mkldnn._convolution_pointwise`,
// `onednn.qconv2d_pointwise`) rebuild memory descriptors, attributes and a primitive descriptor on
// every call before their primitive-cache hit; this is what the probe measures against.
//
// Built against a separately installed libdnnl (PyTorch's bundled oneDNN exports no symbols) by
// build.py, which checks that the library's threading runtime is one this process can share.
#include <oneapi/dnnl/dnnl.hpp>
#include <torch/extension.h>

#include <cstring>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#if DNNL_CPU_RUNTIME == DNNL_RUNTIME_SYCL || DNNL_CPU_RUNTIME == DNNL_RUNTIME_NONE
#error "this libdnnl has no plain CPU engine (DNNL_CPU_RUNTIME is SYCL or none): use an OpenMP/TBB/sequential build"
#endif

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

dnnl::engine &cpu_engine() {
    static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
    return eng;
}

dnnl::stream &cpu_stream() {
    thread_local dnnl::stream strm(cpu_engine());
    return strm;
}

dt to_dt(const std::string &name) {
    if (name == "f32") return dt::f32;
    if (name == "u8") return dt::u8;
    if (name == "s8") return dt::s8;
    if (name == "bf16") return dt::bf16;
    TORCH_CHECK_VALUE(false, "unknown data type '", name, "' (f32, u8, s8, bf16)");
}

at::ScalarType to_scalar(dt d) {
    switch (d) {
        case dt::f32: return at::kFloat;
        case dt::u8: return at::kByte;
        case dt::s8: return at::kChar;
        case dt::bf16: return at::kBFloat16;
        default: TORCH_CHECK(false, "unsupported oneDNN data type");
    }
}

// A memory descriptor Python can hold, compare and size buffers from.
struct Desc {
    memory::desc md;
    Desc() = default;
    explicit Desc(memory::desc m) : md(std::move(m)) {}

    static Desc nhwc(const std::vector<int64_t> &dims, const std::string &dtype) {
        TORCH_CHECK_VALUE(dims.size() == 4, "nhwc descriptor needs 4 dims [N, C, H, W], got ", dims.size());
        return Desc(memory::desc(memory::dims(dims.begin(), dims.end()), to_dt(dtype), tag::nhwc));
    }
    static Desc nchw(const std::vector<int64_t> &dims, const std::string &dtype) {
        TORCH_CHECK_VALUE(dims.size() == 4, "nchw descriptor needs 4 dims [N, C, H, W], got ", dims.size());
        return Desc(memory::desc(memory::dims(dims.begin(), dims.end()), to_dt(dtype), tag::nchw));
    }
    int64_t nbytes() const { return static_cast<int64_t>(md.get_size()); }
    bool is_nhwc() const {
        return md.get_ndims() == 4 && md == memory::desc(md.get_dims(), md.get_data_type(), tag::nhwc);
    }
    bool operator==(const Desc &o) const { return md == o.md; }
    std::vector<int64_t> dims() const {
        auto d = md.get_dims();
        return {d.begin(), d.end()};
    }
    std::string repr() const {
        std::ostringstream s;
        auto join = [&s](const memory::dims &v) {
            s << "[";
            for (size_t i = 0; i < v.size(); ++i) s << (i ? "," : "") << v[i];
            s << "]";
        };
        s << "Desc(dims=";
        join(md.get_dims());
        s << ", strides=";
        join(md.get_strides());
        s << ", inner_blks=";
        join(md.get_inner_blks());
        s << ", inner_idxs=";
        join(md.get_inner_idxs());
        s << ", bytes=" << md.get_size() << (is_nhwc() ? ", nhwc" : "") << ")";
        return s.str();
    }
};

void check_buffer(const torch::Tensor &t, const memory::desc &md, const char *what) {
    TORCH_CHECK_VALUE(t.device().is_cpu(), what, " must be a CPU tensor");
    TORCH_CHECK_VALUE(t.scalar_type() == to_scalar(md.get_data_type()) || t.scalar_type() == at::kByte, what,
                      " has dtype ", t.scalar_type(), ", the primitive expects ", to_scalar(md.get_data_type()));
    TORCH_CHECK_VALUE(static_cast<size_t>(t.nbytes()) >= md.get_size(), what, " holds ", t.nbytes(),
                      " bytes, the primitive reads/writes ", md.get_size());
    TORCH_CHECK_VALUE(t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast), what,
                      " must be contiguous (channels-last for an nhwc descriptor)");
}

// Checks a 4-D torch tensor against an nhwc descriptor: same shape and channels-last strides.
void check_nhwc(const torch::Tensor &t, const memory::desc &md, const char *what) {
    if (t.dim() != 4) return;  // a flat byte buffer for a blocked layout: check_buffer did the rest
    auto d = md.get_dims();
    for (int i = 0; i < 4; ++i)
        TORCH_CHECK_VALUE(t.size(i) == d[i], what, " has shape ", t.sizes(), ", the primitive was made for [",
                          d[0], ", ", d[1], ", ", d[2], ", ", d[3], "]");
    TORCH_CHECK_VALUE(t.is_contiguous(at::MemoryFormat::ChannelsLast) || d[1] == 1, what,
                      " must be channels-last (torch.channels_last)");
}

class Conv {
   public:
    // weight: f32 [O, I/g, kh, kw] (fp32 layers) or s8 (INT8 layers, w_scales per output channel).
    Conv(torch::Tensor weight, c10::optional<torch::Tensor> bias, std::vector<int64_t> src_dims,
         std::vector<int64_t> strides, std::vector<int64_t> pad_l, std::vector<int64_t> pad_r,
         std::vector<int64_t> dilations, int64_t groups, std::string activation, double alpha, double beta,
         bool residual, c10::optional<Desc> src_desc, std::string dst_format, c10::optional<Desc> residual_desc,
         std::string src_dtype, std::string dst_dtype, double src_scale, int64_t src_zp,
         c10::optional<torch::Tensor> w_scales, double dst_scale, int64_t dst_zp, double residual_scale,
         int64_t residual_zp, std::string residual_dtype)
        : residual_(residual) {
        TORCH_CHECK_VALUE(weight.dim() == 4, "weight must be 4-D [O, I/groups, kh, kw], got ", weight.sizes());
        TORCH_CHECK_VALUE(src_dims.size() == 4, "src_dims must be [N, C, H, W]");
        TORCH_CHECK_VALUE(groups >= 1 && src_dims[1] == weight.size(1) * groups, "input has ", src_dims[1],
                          " channels, weight expects ", weight.size(1) * groups, " (", groups, " groups)");
        const int64_t oc = weight.size(0), kh = weight.size(2), kw = weight.size(3);
        TORCH_CHECK_VALUE(oc % groups == 0, "output channels ", oc, " not divisible by groups ", groups);
        const dt sdt = to_dt(src_dtype), ddt = to_dt(dst_dtype);
        const bool int8 = weight.scalar_type() == at::kChar;
        TORCH_CHECK_VALUE(int8 || weight.scalar_type() == at::kFloat, "weight must be float32 or int8");
        TORCH_CHECK_VALUE(!int8 || sdt == dt::u8 || sdt == dt::s8, "an int8 weight needs u8/s8 activations");
        auto out_size = [&](int i) {
            int64_t k = (i == 0 ? kh : kw), s = strides[i], d = dilations[i];
            return (src_dims[2 + i] + pad_l[i] + pad_r[i] - ((k - 1) * d + 1)) / s + 1;
        };
        memory::dims sd(src_dims.begin(), src_dims.end());
        memory::dims dd{src_dims[0], oc, out_size(0), out_size(1)};
        TORCH_CHECK_VALUE(dd[2] > 0 && dd[3] > 0, "convolution output would be empty");
        memory::dims wd = groups == 1 ? memory::dims{oc, weight.size(1), kh, kw}
                                      : memory::dims{groups, oc / groups, weight.size(1), kh, kw};
        memory::dims dil{dilations[0] - 1, dilations[1] - 1};  // oneDNN counts dilation from 0
        const tag io = dst_format == "nhwc" ? tag::nhwc : tag::any;
        TORCH_CHECK_VALUE(dst_format == "nhwc" || dst_format == "any", "dst_format must be nhwc or any");
        memory::desc src_md = src_desc ? src_desc->md : memory::desc(sd, sdt, io);
        TORCH_CHECK_VALUE(src_md.get_dims() == sd, "src_desc dims do not match src_dims");
        memory::desc dst_md(dd, ddt, io);
        memory::desc wei_any(wd, int8 ? dt::s8 : (sdt == dt::bf16 ? dt::bf16 : dt::f32), tag::any);
        memory::desc bias_md({oc}, dt::f32, tag::x);

        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        dnnl::post_ops po;
        if (residual) {
            if (int8) {
                // dst_old is reinterpreted as residual_dtype (u8 <-> s8: same size), then
                // dst_f += residual_scale * (dst_old - residual_zp) before the output's requantization
                po.append_sum(static_cast<float>(residual_scale), static_cast<int32_t>(residual_zp),
                              residual_dtype.empty() ? dt::undef : to_dt(residual_dtype));
            } else {
                memory::desc r = residual_desc ? residual_desc->md : memory::desc(dd, ddt, tag::nhwc);
                po.append_binary(dnnl::algorithm::binary_add, r);
                res_md_ = r;
            }
        }
        if (activation == "relu") {
            po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
        } else if (activation == "clip") {
            po.append_eltwise(dnnl::algorithm::eltwise_clip, static_cast<float>(alpha), static_cast<float>(beta));
        } else {
            TORCH_CHECK_VALUE(activation == "none", "activation must be none, relu or clip, got '", activation, "'");
        }
        attr.set_post_ops(po);
        if (int8) {
            TORCH_CHECK_VALUE(w_scales.has_value() && w_scales->numel() == oc, "INT8 needs one weight scale per output channel");
            attr.set_scales_mask(DNNL_ARG_SRC, 0);
            attr.set_scales_mask(DNNL_ARG_WEIGHTS, groups == 1 ? 1 : 3);
            if (ddt != dt::f32) attr.set_scales_mask(DNNL_ARG_DST, 0);
            if (src_zp) attr.set_zero_points_mask(DNNL_ARG_SRC, 0);
            if (dst_zp && ddt != dt::f32) attr.set_zero_points_mask(DNNL_ARG_DST, 0);
        }
        auto &eng = cpu_engine();
        pd_ = dnnl::convolution_forward::primitive_desc(
            eng, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src_md, wei_any, bias_md,
            dst_md, memory::dims{strides[0], strides[1]}, dil, memory::dims{pad_l[0], pad_l[1]},
            memory::dims{pad_r[0], pad_r[1]}, attr);
        prim_ = dnnl::convolution_forward(pd_);

        // weights: reordered once into the primitive's layout
        torch::Tensor w = weight.contiguous();
        memory user_w(memory::desc(wd, int8 ? dt::s8 : dt::f32, groups == 1 ? tag::oihw : tag::goihw), eng,
                      w.data_ptr());
        wei_buf_ = torch::empty({static_cast<int64_t>(pd_.weights_desc().get_size())}, torch::kUInt8);
        memory wei_m(pd_.weights_desc(), eng, wei_buf_.data_ptr());
        dnnl::reorder(user_w, wei_m).execute(cpu_stream(), user_w, wei_m);
        cpu_stream().wait();

        bias_buf_ = bias ? bias->to(torch::kFloat).contiguous().clone() : torch::zeros({oc}, torch::kFloat);
        TORCH_CHECK_VALUE(bias_buf_.numel() == oc, "bias has ", bias_buf_.numel(), " values for ", oc, " channels");
        scratch_buf_ = torch::empty({std::max<int64_t>(1, pd_.scratchpad_desc().get_size())}, torch::kUInt8);

        src_m_ = memory(pd_.src_desc(), eng, DNNL_MEMORY_NONE);
        dst_m_ = memory(pd_.dst_desc(), eng, DNNL_MEMORY_NONE);
        args_[DNNL_ARG_SRC] = src_m_;
        args_[DNNL_ARG_DST] = dst_m_;
        args_[DNNL_ARG_WEIGHTS] = wei_m;
        args_[DNNL_ARG_BIAS] = memory(bias_md, eng, bias_buf_.data_ptr());
        args_[DNNL_ARG_SCRATCHPAD] = memory(pd_.scratchpad_desc(), eng, scratch_buf_.data_ptr());
        if (residual && !int8) {
            res_m_ = memory(res_md_, eng, DNNL_MEMORY_NONE);
            args_[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = res_m_;
        }
        if (int8) {
            auto scalar_f32 = [&](float v) {
                torch::Tensor t = torch::full({1}, v, torch::kFloat);
                keep_.push_back(t);
                return memory(memory::desc({1}, dt::f32, tag::x), eng, t.data_ptr());
            };
            auto scalar_s32 = [&](int32_t v) {
                torch::Tensor t = torch::full({1}, v, torch::kInt);
                keep_.push_back(t);
                return memory(memory::desc({1}, dt::s32, tag::x), eng, t.data_ptr());
            };
            torch::Tensor ws = w_scales->to(torch::kFloat).contiguous().clone();
            keep_.push_back(ws);
            args_[DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC] = scalar_f32(static_cast<float>(src_scale));
            args_[DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS] =
                memory(memory::desc({oc}, dt::f32, tag::x), eng, ws.data_ptr());
            if (ddt != dt::f32) args_[DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST] = scalar_f32(static_cast<float>(dst_scale));
            if (src_zp) args_[DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC] = scalar_s32(static_cast<int32_t>(src_zp));
            if (dst_zp && ddt != dt::f32)
                args_[DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_DST] = scalar_s32(static_cast<int32_t>(dst_zp));
        }
        sum_residual_ = residual && int8;
        src_nhwc_ = Desc(pd_.src_desc()).is_nhwc();
        dst_nhwc_ = Desc(pd_.dst_desc()).is_nhwc();
    }

    // Executes the primitive: x -> out (both laid out as src_desc / dst_desc say). With a residual,
    // `residual` is added (fp32: a binary post-op reading it; INT8: copied into `out` first, then
    // oneDNN's sum post-op accumulates into it, as PyTorch's qconv .binary does).
    void run(const torch::Tensor &x, const torch::Tensor &out, const c10::optional<torch::Tensor> &residual) {
        check_buffer(x, pd_.src_desc(), "input");
        check_buffer(out, pd_.dst_desc(), "output");
        if (src_nhwc_) check_nhwc(x, pd_.src_desc(), "input");
        if (dst_nhwc_) check_nhwc(out, pd_.dst_desc(), "output");
        TORCH_CHECK_VALUE(residual.has_value() == residual_, residual_ ? "this convolution adds a residual: pass it"
                                                                       : "this convolution has no residual input");
        src_m_.set_data_handle(x.data_ptr());
        dst_m_.set_data_handle(out.data_ptr());
        if (residual_) {
            const torch::Tensor &r = *residual;
            if (sum_residual_) {
                check_buffer(r, pd_.dst_desc(), "residual");
                if (r.data_ptr() != out.data_ptr()) std::memcpy(out.data_ptr(), r.data_ptr(), pd_.dst_desc().get_size());
            } else {
                check_buffer(r, res_md_, "residual");
                res_m_.set_data_handle(r.data_ptr());
            }
        }
        {
            pybind11::gil_scoped_release nogil;
            prim_.execute(cpu_stream(), args_);
            cpu_stream().wait();
        }
    }

    std::string impl() const { return pd_.impl_info_str(); }
    Desc src_desc() const { return Desc(pd_.src_desc()); }
    Desc dst_desc() const { return Desc(pd_.dst_desc()); }
    Desc weights_desc() const { return Desc(pd_.weights_desc()); }
    int64_t scratchpad_bytes() const { return static_cast<int64_t>(pd_.scratchpad_desc().get_size()); }

   private:
    bool residual_ = false, sum_residual_ = false, src_nhwc_ = true, dst_nhwc_ = true;
    dnnl::convolution_forward::primitive_desc pd_;
    dnnl::convolution_forward prim_;
    memory src_m_, dst_m_, res_m_;
    memory::desc res_md_;
    torch::Tensor wei_buf_, bias_buf_, scratch_buf_;
    std::vector<torch::Tensor> keep_;
    std::unordered_map<int, memory> args_;
};

// A reorder between two layouts (blocked <-> nhwc), created once.
class Reorder {
   public:
    Reorder(const Desc &src, const Desc &dst) : src_md_(src.md), dst_md_(dst.md) {
        auto &eng = cpu_engine();
        src_m_ = memory(src.md, eng, DNNL_MEMORY_NONE);
        dst_m_ = memory(dst.md, eng, DNNL_MEMORY_NONE);
        prim_ = dnnl::reorder(dnnl::reorder::primitive_desc(eng, src.md, eng, dst.md));
    }
    void run(const torch::Tensor &x, const torch::Tensor &out) {
        check_buffer(x, src_md_, "input");
        check_buffer(out, dst_md_, "output");
        src_m_.set_data_handle(x.data_ptr());
        dst_m_.set_data_handle(out.data_ptr());
        pybind11::gil_scoped_release nogil;
        prim_.execute(cpu_stream(), src_m_, dst_m_);
        cpu_stream().wait();
    }

   private:
    memory::desc src_md_, dst_md_;
    memory src_m_, dst_m_;
    dnnl::reorder prim_;
};

pybind11::dict version() {
    const dnnl_version_t *v = dnnl_version();
    pybind11::dict d;
    d["major"] = v->major;
    d["minor"] = v->minor;
    d["patch"] = v->patch;
    d["hash"] = std::string(v->hash);
    d["cpu_runtime"] = v->cpu_runtime;
    d["header_version"] = std::to_string(DNNL_VERSION_MAJOR) + "." + std::to_string(DNNL_VERSION_MINOR) + "." +
                          std::to_string(DNNL_VERSION_PATCH);
    d["header_cpu_runtime"] = static_cast<unsigned>(DNNL_CPU_RUNTIME);
    return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Persistent oneDNN convolution primitives (Ember issue-19 probe)";
    m.def("version", &version, "libdnnl's version and CPU runtime (and the headers' it was built with)");
    m.def("set_verbose", [](int level) { dnnl::set_verbose(level); },
          "oneDNN's verbose level for this libdnnl (1: one line per primitive execution, on stdout)");
    pybind11::class_<Desc>(m, "Desc")
        .def_static("nhwc", &Desc::nhwc)
        .def_static("nchw", &Desc::nchw)
        .def_property_readonly("nbytes", &Desc::nbytes)
        .def_property_readonly("is_nhwc", &Desc::is_nhwc)
        .def_property_readonly("dims", &Desc::dims)
        .def("__eq__", &Desc::operator==)
        .def("__repr__", &Desc::repr);
    pybind11::class_<Conv>(m, "Conv")
        .def(pybind11::init<torch::Tensor, c10::optional<torch::Tensor>, std::vector<int64_t>, std::vector<int64_t>,
                            std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>, int64_t, std::string,
                            double, double, bool, c10::optional<Desc>, std::string, c10::optional<Desc>, std::string,
                            std::string, double, int64_t, c10::optional<torch::Tensor>, double, int64_t, double,
                            int64_t, std::string>(),
             pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("src_dims"), pybind11::arg("strides"),
             pybind11::arg("pad_l"), pybind11::arg("pad_r"), pybind11::arg("dilations"), pybind11::arg("groups"),
             pybind11::arg("activation") = "none", pybind11::arg("alpha") = 0.0, pybind11::arg("beta") = 0.0,
             pybind11::arg("residual") = false, pybind11::arg("src_desc") = pybind11::none(),
             pybind11::arg("dst_format") = "nhwc", pybind11::arg("residual_desc") = pybind11::none(),
             pybind11::arg("src_dtype") = "f32", pybind11::arg("dst_dtype") = "f32",
             pybind11::arg("src_scale") = 1.0, pybind11::arg("src_zp") = 0,
             pybind11::arg("w_scales") = pybind11::none(), pybind11::arg("dst_scale") = 1.0,
             pybind11::arg("dst_zp") = 0, pybind11::arg("residual_scale") = 1.0, pybind11::arg("residual_zp") = 0,
             pybind11::arg("residual_dtype") = "")
        .def("run", &Conv::run, pybind11::arg("x"), pybind11::arg("out"), pybind11::arg("residual") = pybind11::none())
        .def_property_readonly("impl", &Conv::impl)
        .def_property_readonly("src_desc", &Conv::src_desc)
        .def_property_readonly("dst_desc", &Conv::dst_desc)
        .def_property_readonly("weights_desc", &Conv::weights_desc)
        .def_property_readonly("scratchpad_bytes", &Conv::scratchpad_bytes);
    pybind11::class_<Reorder>(m, "Reorder")
        .def(pybind11::init<const Desc &, const Desc &>())
        .def("run", &Reorder::run);
}
