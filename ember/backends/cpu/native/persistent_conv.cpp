// Persistent oneDNN convolutions and INT8 GEMMs: Ember's CPU tactic ``onednn_persistent`` (issues 19, 14).
//
// PyTorch's entry point (``mkldnn._convolution_pointwise``) rebuilds memory descriptors, the
// post-op attribute and a primitive descriptor on every call before its primitive-cache hit:
// 36-70 us of CPU per call on the 2-core Xeon measured (bench/probes/onednn_persistent). Here a
// ``Layer`` holds one convolution's constants (its weight reordered once per weight layout a
// primitive asks for, shared by every input shape; its bias), and ``Layer.prepare`` makes, once
// per input shape, a ``Conv``: the primitive without the activation ("exact": the caller applies
// it, so NaN stays NaN) and, where there is a ReLU / clip, a second one with it fused as an
// eltwise post-op ("fused": oneDNN's relu / clip turn NaN into 0, so the caller uses it only on
// runs whose inputs are finite). ``Conv.run`` only binds the tensors' data and executes.
// A bf16 layer is a float one whose activations (input, residual, and output unless it is asked
// for f32) are bf16: its float32 weight is packed as bf16 (oneDNN's reorder converts it, once),
// its bias stays f32 (oneDNN accumulates in f32), and oneDNN runs it on AMX / AVX-512 BF16.
// INT8 layers (an s8 weight, u8/s8 activations, per-output-channel weight scales, source /
// output scales and zero points as runtime arguments, the residual as oneDNN's ``sum`` post-op
// into the output the caller fills with it) have one primitive, the activation always fused.
//
// Re-entrant: a ``Conv`` holds no per-call state. The memory objects a call binds are the calling
// thread's (``Bound``, made once per thread and primitive, re-pointed per call), the scratchpad is
// per thread (``thread_local``, grown as needed), and the GIL is
// released while oneDNN runs, so any number of execution contexts may run one ``Conv`` from any
// number of threads at once.
//
// Built against a separately installed libdnnl (PyTorch's bundled oneDNN exports no symbols)
// by ``ember/backends/cpu/native/__init__.py``, which checks first that the library's threading
// runtime is one this process can share (GNU OpenMP, PyTorch's own libgomp).
#include <oneapi/dnnl/dnnl.hpp>
#include <torch/extension.h>
#include <pybind11/numpy.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#if DNNL_CPU_RUNTIME == DNNL_RUNTIME_SYCL || DNNL_CPU_RUNTIME == DNNL_RUNTIME_NONE
#error "this libdnnl has no plain CPU engine (DNNL_CPU_RUNTIME is SYCL or none): use an OpenMP build"
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

// The calling thread's scratchpad, grown to the largest any primitive asked for on it.
void *thread_scratchpad(size_t bytes) {
    struct Buffer {
        void *ptr = nullptr;
        size_t size = 0;
        ~Buffer() { std::free(ptr); }
    };
    thread_local Buffer buf;
    if (bytes > buf.size) {
        std::free(buf.ptr);
        size_t size = (bytes + 4095) / 4096 * 4096;
        buf.ptr = std::aligned_alloc(64, size);
        TORCH_CHECK(buf.ptr != nullptr, "could not allocate a ", size, "-byte oneDNN scratchpad");
        buf.size = size;
    }
    return buf.ptr;
}

// Runs primitive `prim` (of descriptor `pd`) on `args` with the calling thread's scratchpad, and
// waits for it; no Python (callable without the GIL).
template <typename PD, typename P>
void run_primitive(const PD &pd, const P &prim, std::unordered_map<int, memory> &args) {
    const memory::desc sd = pd.scratchpad_desc();
    args.emplace(DNNL_ARG_SCRATCHPAD, memory(sd, cpu_engine(), thread_scratchpad(std::max<size_t>(sd.get_size(), 1))));
    dnnl::stream &s = cpu_stream();
    prim.execute(s, args);
    s.wait();
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

dt to_dt(const std::string &name) {
    if (name == "f32") return dt::f32;
    if (name == "u8") return dt::u8;
    if (name == "s8") return dt::s8;
    if (name == "bf16") return dt::bf16;
    TORCH_CHECK_VALUE(false, "unknown data type '", name, "' (f32, bf16, u8, s8)");
}

dt to_dt(at::ScalarType t) {
    switch (t) {
        case at::kFloat: return dt::f32;
        case at::kByte: return dt::u8;
        case at::kChar: return dt::s8;
        case at::kBFloat16: return dt::bf16;
        default: TORCH_CHECK_VALUE(false, "unsupported tensor type ", t, " (float32, bfloat16, uint8, int8)");
    }
}

bool eight_bit(dt d) { return d == dt::u8 || d == dt::s8; }

void check_nhwc(const torch::Tensor &t, const memory::desc &md, const char *what) {
    const at::ScalarType want = to_scalar(md.get_data_type());
    TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == want, what, " must be a ", want,
                      " CPU tensor, got ", t.scalar_type(), " on ", t.device());
    auto d = md.get_dims();
    TORCH_CHECK_VALUE(t.dim() == 4, what, " must be 4-D, got ", t.sizes());
    for (int i = 0; i < 4; ++i)
        TORCH_CHECK_VALUE(t.size(i) == d[i], what, " has shape ", t.sizes(), ", the primitive was made for [",
                          d[0], ", ", d[1], ", ", d[2], ", ", d[3], "]");
    TORCH_CHECK_VALUE(t.is_contiguous(at::MemoryFormat::ChannelsLast), what,
                      " must be channels-last contiguous (torch.channels_last)");
}

// Whether oneDNN may use AVX-512 here (the CPU has it, and ONEDNN_MAX_CPU_ISA does not mask it).
bool avx512_isa() {
    const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    const auto want = static_cast<unsigned>(dnnl::cpu_isa::avx512_core);
    return (isa & want) == want;
}

// Activation layouts a float convolution may be made for: "nhwc" (channels-last, Ember's
// tensors), "nchw" (a contiguous NCHW tensor: a chain's image) and "blocked" (oneDNN's native
// layout for the CPU's vectors, kept between the layers of a chain: nChw16c with AVX-512,
// nChw8c on an AVX2 CPU, where oneDNN 3.2 has only its reference convolution for nChw16c, about
// 100x slower; its buffers are flat, of `md.get_size()` bytes, the channels padded with zeros).
tag to_tag(const std::string &layout) {
    if (layout == "nhwc") return tag::nhwc;
    if (layout == "nchw") return tag::nchw;
    if (layout == "blocked") {
        static const tag blocked = avx512_isa() ? tag::nChw16c : tag::nChw8c;
        return blocked;
    }
    TORCH_CHECK_VALUE(false, "unknown activation layout '", layout, "' (nhwc, nchw, blocked)");
}

bool is_tag(const memory::desc &md, tag t) { return md == memory::desc(md.get_dims(), md.get_data_type(), t); }

// Whether `t` holds a tensor of descriptor `md` (type, and for nhwc / nchw shape and strides; for
// another layout a contiguous buffer of at least md's size).
bool holds(const torch::Tensor &t, const memory::desc &md) {
    if (!t.device().is_cpu() || t.scalar_type() != to_scalar(md.get_data_type())) return false;
    const auto d = md.get_dims();
    const bool nhwc = is_tag(md, tag::nhwc);
    if (nhwc || is_tag(md, tag::nchw))
        return t.dim() == 4 && t.sizes() == c10::IntArrayRef(d.data(), d.size()) &&
               t.is_contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    return t.is_contiguous() && t.nbytes() >= md.get_size();
}

// `check_nhwc` for any layout `to_tag` names (raises ValueError naming `what`); `nhwc`: whether `md`
// is channels-last (known to the caller, so the per-call check builds no descriptor).
void check_layout(const torch::Tensor &t, const memory::desc &md, bool nhwc, const char *what) {
    if (nhwc) return check_nhwc(t, md, what);
    TORCH_CHECK_VALUE(holds(t, md), what, " does not fit the primitive's ",
                      is_tag(md, tag::nchw) ? "contiguous NCHW" : "blocked (flat buffer)", " layout: got a ",
                      t.scalar_type(), " tensor of shape ", t.sizes(), " (", t.nbytes(), " bytes, the layout needs ",
                      md.get_size(), ")");
}

// The descriptor of the binary-add residual where `pd`'s first post-op is a binary one, else an
// empty descriptor. oneDNN (3.2) answers the query for post-op 0's second source whatever kind
// that post-op is: for an eltwise or a sum post-op it hands back the unused bytes of the post-op's
// union, a "descriptor" of whatever the heap held there. A fused-activation primitive's residual
// descriptor was such garbage; `get_size()` on one whose ndims read -1 looped over the stack (the
// rare CPU-test segmentation fault of sessions 21-23; docs/CPU_NATIVE.md, "A rare crash").
memory::desc binary_residual_md(const dnnl::convolution_forward::primitive_desc &pd) {
    const dnnl::post_ops po = pd.get_primitive_attr().get_post_ops();
    if (po.len() == 0 || po.kind(0) != dnnl::primitive::kind::binary) return memory::desc();
    return pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1);
}

struct Primitive {
    dnnl::convolution_forward::primitive_desc pd;
    dnnl::convolution_forward prim;
    memory weights;  // the layer's weight in this primitive's layout (shared between primitives)
    torch::Tensor weight_buf;  // holds `weights`' buffer while this primitive lives
    // what each call checks and binds, queried once (each query clones a descriptor): the
    // binary-add residual's is empty where the primitive has none (it has the activations' type:
    // a bf16 layer writing f32 reads a bf16 residual); and an id no other primitive of the
    // process has (`Bound`'s key: an address may be reused after a release)
    memory::desc src_md = pd.src_desc(), dst_md = pd.dst_desc(), scratch_md = pd.scratchpad_desc(),
                 residual_md = binary_residual_md(pd);
    size_t scratch_bytes = std::max<size_t>(scratch_md.get_size(), 1);  // what a call asks its thread for
    uint64_t id = next_id();

    static uint64_t next_id() {
        static std::atomic<uint64_t> n{0};
        return ++n;
    }
};

// The memory objects a call of primitive `p` binds on the calling thread (source, destination,
// scratchpad, binary residual), made once per thread and primitive and re-pointed per call: making
// them per call cost three descriptor copies and allocations a layer, a third of a small layer's
// time inside a chain. At most 4,096 primitives a thread are remembered (then it starts over).
struct Bound {
    memory src, dst, scratch, residual;
};

Bound &bound(const Primitive &p) {
    thread_local std::unordered_map<uint64_t, Bound> made;
    auto it = made.find(p.id);
    if (it != made.end()) return it->second;
    if (made.size() >= 4096) made.clear();
    auto &eng = cpu_engine();
    Bound b{memory(p.src_md, eng, nullptr), memory(p.dst_md, eng, nullptr), memory(p.scratch_md, eng, nullptr),
            p.residual_md.get_size() > 0 ? memory(p.residual_md, eng, nullptr) : memory()};
    return made.emplace(p.id, std::move(b)).first->second;
}

using Args = std::vector<std::pair<int, memory>>;

// A chain step's output type by its `run_chain` code (`dtypes`: 0 f32, 1 u8, 2 s8, 3 bf16).
const c10::ScalarType kChainTypes[] = {torch::kFloat32, torch::kUInt8, torch::kInt8, torch::kBFloat16};

// A step of a chain (`run_chain`): a convolution (`Conv`), or one of the layers between
// convolutions that a chain may run too (`GlobalPool`, `ChannelScale`: a squeeze-excite block's
// pooling and its scale). A step reads its input (and, where it has one, a second operand: a
// convolution's residual, a scale's factors) and writes its output, in the layouts it was made
// for; `execute` runs it on checked arguments without Python (callable without the GIL).
class Step {
   public:
    virtual ~Step() = default;
    // The arguments fit the step (raises ValueError otherwise); `fused`: the fused activation.
    virtual void check(const torch::Tensor &x, const torch::Tensor &out, const c10::optional<torch::Tensor> &residual,
                       bool fused) const = 0;
    virtual void execute(const torch::Tensor &x, const torch::Tensor &out,
                         const c10::optional<torch::Tensor> &residual, bool fused) const = 0;
    virtual bool has_residual() const = 0;
    // fp32 convolutions: the residual added in place (`Conv::execute_summed`).
    virtual bool has_summed() const { return false; }
    virtual void execute_summed(const torch::Tensor &, const torch::Tensor &) const {
        TORCH_CHECK_VALUE(false, "this chain step adds no residual in place");
    }
    virtual bool has_fused() const { return false; }
    // Whether the output may be the input's own buffer (the step reads each element before it writes it).
    virtual bool in_place() const { return false; }
    virtual const memory::desc &src_desc() const = 0;
    virtual const memory::desc &dst_desc() const = 0;
    // The second operand's descriptor (empty where the step has none).
    virtual const memory::desc &residual_md() const = 0;
    // Whether the step reads / writes channels-last (else NCHW or blocked: `Layer.prepare`).
    virtual bool nhwc_src() const = 0;
    virtual bool nhwc_dst() const = 0;
    virtual std::string impl() const = 0;
    std::vector<int64_t> dst_dims() const {
        auto d = dst_desc().get_dims();
        return {d.begin(), d.end()};
    }
};

class Conv : public Step {
   public:
    // `residual`: the residual is an input (fp32: oneDNN's binary add reads it); INT8 layers sum
    // into `out` instead, which the caller fills with the residual first. `extra`: constant
    // arguments (INT8 scales and zero points).
    // `summed` (fp32 layers with a residual): the same layer adding the residual with oneDNN's `sum`
    // post-op into `out`, which already holds the residual (in place), then the activation fused.
    // `held`: buffers `extra`'s memories point into (a depthwise pair's second weight), kept alive
    // (and so kept by their layer's `release_unused`) while this convolution lives.
    Conv(Primitive exact, std::unique_ptr<Primitive> fused, memory bias, bool residual, Args extra,
         std::unique_ptr<Primitive> summed = nullptr, std::vector<torch::Tensor> held = {})
        : exact_(std::move(exact)), fused_(std::move(fused)), bias_(std::move(bias)), residual_(residual),
          extra_(std::move(extra)), summed_(std::move(summed)), held_(std::move(held)),
          nhwc_src_(is_tag(exact_.src_md, tag::nhwc)), nhwc_dst_(is_tag(exact_.dst_md, tag::nhwc)) {
        TORCH_CHECK(extra_.size() <= 10, "a convolution takes at most 10 constant arguments (`launch`)");
    }

    // x -> out (both NHWC, shapes as made for); with a residual, out = conv(x) + residual, then the
    // activation when `fused` (valid only where the primitive has one: `has_fused`).
    void run(const torch::Tensor &x, const torch::Tensor &out, const c10::optional<torch::Tensor> &residual,
             bool fused) {
        check(x, out, residual, fused);
        at::internal::lazy_init_num_threads();  // this thread's OpenMP team size = torch's
        pybind11::gil_scoped_release nogil;
        execute(x, out, residual, fused);
    }

    // The checks of `run`: the arguments fit the primitive (raises ValueError otherwise).
    void check(const torch::Tensor &x, const torch::Tensor &out, const c10::optional<torch::Tensor> &residual,
               bool fused) const override {
        TORCH_CHECK_VALUE(!fused || fused_, "this convolution has no fused activation");
        const Primitive &p = fused ? *fused_ : exact_;
        check_layout(x, p.src_md, nhwc_src_, "input");
        check_layout(out, p.dst_md, nhwc_dst_, "output");
        TORCH_CHECK_VALUE(residual.has_value() == residual_, residual_ ? "this convolution adds a residual: pass it"
                                                                       : "this convolution has no residual input");
        if (residual_) check_layout(*residual, p.residual_md, nhwc_dst_, "residual");
    }

    // The primitive on checked arguments; no Python (callable without the GIL).
    void execute(const torch::Tensor &x, const torch::Tensor &out, const c10::optional<torch::Tensor> &residual,
                 bool fused) const override {
        launch(fused ? *fused_ : exact_, x, out, residual_ ? residual->data_ptr() : nullptr);
    }

    bool has_residual() const override { return residual_; }

    // fp32, residual in place: `out` holds the residual and receives act(conv(x) + out). Callable
    // without the GIL; `out` is checked like an output.
    bool has_summed() const override { return static_cast<bool>(summed_); }
    void execute_summed(const torch::Tensor &x, const torch::Tensor &out) const override {
        TORCH_CHECK_VALUE(summed_, "this convolution adds no residual in place");
        check_layout(x, summed_->src_md, nhwc_src_, "input");
        check_layout(out, summed_->dst_md, nhwc_dst_, "output");
        launch(*summed_, x, out, nullptr);
    }

    bool has_fused() const override { return static_cast<bool>(fused_); }
    std::string impl() const override { return exact_.pd.impl_info_str(); }
    const memory::desc &src_desc() const override { return exact_.src_md; }
    const memory::desc &dst_desc() const override { return exact_.dst_md; }
    // The binary-add residual's descriptor (fp32 / bf16 layers with a residual).
    const memory::desc &residual_md() const override { return exact_.residual_md; }
    bool nhwc_src() const override { return nhwc_src_; }
    bool nhwc_dst() const override { return nhwc_dst_; }
    int64_t scratchpad_bytes() const { return static_cast<int64_t>(exact_.scratch_md.get_size()); }
    // The bytes of the binary residual each primitive reads (the plain one, then the fused-activation
    // one where there is one): 0 where a primitive adds no binary residual.
    std::vector<int64_t> residual_bytes() const {
        std::vector<int64_t> out{static_cast<int64_t>(exact_.residual_md.get_size())};
        if (fused_) out.push_back(static_cast<int64_t>(fused_->residual_md.get_size()));
        return out;
    }

   private:
    // Runs `p` on x -> out; `residual`: the binary-add post-op's operand (nullptr: none). Binds
    // this thread's memory objects for `p` (`bound`) and executes through oneDNN's C API, which
    // takes the arguments as an array: no allocation here per call.
    void launch(const Primitive &p, const torch::Tensor &x, const torch::Tensor &out, void *residual) const {
        Bound &b = bound(p);
        b.src.set_data_handle(x.data_ptr());
        b.dst.set_data_handle(out.data_ptr());
        b.scratch.set_data_handle(thread_scratchpad(p.scratch_bytes));
        dnnl_exec_arg_t args[16];
        int n = 0;
        auto add = [&](int arg, const memory &m) { args[n++] = {arg, m.get()}; };
        add(DNNL_ARG_SRC, b.src);
        add(DNNL_ARG_DST, b.dst);
        add(DNNL_ARG_WEIGHTS, p.weights);
        add(DNNL_ARG_BIAS, bias_);
        add(DNNL_ARG_SCRATCHPAD, b.scratch);
        for (const auto &e : extra_) add(e.first, e.second);
        if (residual != nullptr) {
            TORCH_CHECK(b.residual, "this convolution primitive has no binary residual");
            b.residual.set_data_handle(residual);
            add(DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, b.residual);
        }
        dnnl::stream &s = cpu_stream();
        dnnl::error::wrap_c_api(dnnl_primitive_execute(p.prim.get(), s.get(), n, args),
                                "could not execute a convolution primitive");
        s.wait();
    }

    Primitive exact_;
    std::unique_ptr<Primitive> fused_;
    memory bias_;
    bool residual_;
    Args extra_;
    std::unique_ptr<Primitive> summed_;
    std::vector<torch::Tensor> held_;
    bool nhwc_src_, nhwc_dst_;
};

// Appends ``activation`` as a oneDNN eltwise post-op (`Layer`'s names: none, relu, clip of
// [alpha, beta], leaky_relu of slope alpha, hardsigmoid max(0, min(1, alpha x + beta)), hardswish
// x hardsigmoid(x), sigmoid, silu x sigmoid(x), tanh, gelu_erf, gelu_tanh). Each is exact on finite
// values only (relu and clip turn NaN into numbers, the GELUs +inf into NaN): callers fuse them in
// runs with finite inputs.
void append_eltwise(dnnl::post_ops &po, const std::string &activation, double alpha, double beta) {
    const float a = static_cast<float>(alpha), b = static_cast<float>(beta);
    if (activation == "relu")
        po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    else if (activation == "clip")
        po.append_eltwise(dnnl::algorithm::eltwise_clip, a, b);
    else if (activation == "leaky_relu")
        po.append_eltwise(dnnl::algorithm::eltwise_relu, a, 0.f);
    else if (activation == "hardsigmoid")
        po.append_eltwise(dnnl::algorithm::eltwise_hardsigmoid, a, b);
    else if (activation == "hardswish")
        po.append_eltwise(dnnl::algorithm::eltwise_hardswish, a, b);
    else if (activation == "sigmoid")
        po.append_eltwise(dnnl::algorithm::eltwise_logistic, 0.f, 0.f);
    else if (activation == "silu")  // x sigmoid(x): oneDNN's swish of alpha 1
        po.append_eltwise(dnnl::algorithm::eltwise_swish, 1.f, 0.f);
    else if (activation == "tanh")
        po.append_eltwise(dnnl::algorithm::eltwise_tanh, 0.f, 0.f);
    else if (activation == "gelu_erf")
        po.append_eltwise(dnnl::algorithm::eltwise_gelu_erf, 0.f, 0.f);
    else if (activation == "gelu_tanh")
        po.append_eltwise(dnnl::algorithm::eltwise_gelu_tanh, 0.f, 0.f);
    else
        TORCH_CHECK_VALUE(activation == "none", "unknown activation '", activation,
                          "' (none, relu, clip, leaky_relu, hardsigmoid, hardswish, sigmoid, silu, tanh, gelu_erf, "
                          "gelu_tanh)");
}

// A oneDNN primitive other than a convolution, with the descriptors of the arguments a call gives
// it, run as `Conv` runs its own: the memory objects made once per thread and primitive and
// re-pointed per call, the scratchpad the thread's; no Python (callable without the GIL).
class Simple {
   public:
    template <typename PD>
    Simple(const PD &pd, std::vector<std::pair<int, memory::desc>> args)
        : prim_(pd), args_(std::move(args)), scratch_md_(pd.scratchpad_desc()),
          scratch_bytes_(std::max<size_t>(scratch_md_.get_size(), 1)), impl_(pd.impl_info_str()) {
        TORCH_CHECK(args_.size() < 8, "a primitive takes at most 7 arguments here");
    }

    // `data`: one pointer per argument, in the order of `args`.
    void run(std::initializer_list<void *> data) const {
        thread_local std::unordered_map<uint64_t, std::vector<memory>> made;
        auto it = made.find(id_);
        if (it == made.end()) {
            if (made.size() >= 4096) made.clear();
            std::vector<memory> ms;
            for (const auto &a : args_) ms.emplace_back(a.second, cpu_engine(), nullptr);
            ms.emplace_back(scratch_md_, cpu_engine(), nullptr);
            it = made.emplace(id_, std::move(ms)).first;
        }
        std::vector<memory> &ms = it->second;
        TORCH_CHECK(data.size() == args_.size(), "a primitive got ", data.size(), " arguments for ", args_.size());
        dnnl_exec_arg_t exec[8];
        size_t k = 0;
        for (void *p : data) {
            ms[k].set_data_handle(p);
            exec[k] = {args_[k].first, ms[k].get()};
            ++k;
        }
        ms[k].set_data_handle(thread_scratchpad(scratch_bytes_));
        exec[k] = {DNNL_ARG_SCRATCHPAD, ms[k].get()};
        dnnl::stream &s = cpu_stream();
        dnnl::error::wrap_c_api(dnnl_primitive_execute(prim_.get(), s.get(), static_cast<int>(k + 1), exec),
                                "could not execute a chain step's primitive");
        s.wait();
    }

    const std::string &impl() const { return impl_; }

   private:
    dnnl::primitive prim_;
    std::vector<std::pair<int, memory::desc>> args_;
    memory::desc scratch_md_;
    size_t scratch_bytes_;
    std::string impl_;
    uint64_t id_ = Primitive::next_id();
};

// The [N, C, H, W] dimensions of a step made for a static input (raises ValueError otherwise).
memory::dims step_dims(const std::vector<int64_t> &dims, const char *what) {
    TORCH_CHECK_VALUE(dims.size() == 4 && std::all_of(dims.begin(), dims.end(), [](int64_t d) { return d > 0; }),
                      what, "'s input must be a non-empty [N, C, H, W], got ", dims.size(), " dimensions");
    return memory::dims(dims.begin(), dims.end());
}

// The layout of a chain step other than a convolution: "nhwc" or "blocked", on both sides.
tag step_tag(const std::string &src_layout, const std::string &dst_layout, const char *what) {
    TORCH_CHECK_VALUE(src_layout == dst_layout && src_layout != "nchw", what, " reads and writes one layout, "
                      "nhwc or blocked: got ", src_layout, " -> ", dst_layout);
    return to_tag(src_layout);
}

// The activations' type of a chain step other than a convolution: "f32" or "bf16" (a bf16 layer's).
dt step_dt(const std::string &dtype) {
    TORCH_CHECK_VALUE(dtype == "f32" || dtype == "bf16", "a chain's pooling or scale computes in f32 or bf16, got '",
                      dtype, "'");
    return to_dt(dtype);
}

// Global average pooling of [N, C, H, W] (`d`) to [N, C, 1, 1] in oneDNN's pooling (averaging in
// float32 whatever the type): a chain's `GlobalPool` and a head's first layer.
dnnl::pooling_forward::primitive_desc global_pool_pd(const memory::dims &d, dt type, tag src_tag, tag dst_tag) {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const memory::dims window{d[2], d[3]}, zero{0, 0};
    return dnnl::pooling_forward::primitive_desc(
        cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_avg_exclude_padding,
        memory::desc(d, type, src_tag), memory::desc({d[0], d[1], 1, 1}, type, dst_tag), window, window, zero, zero,
        zero, attr);
}

// Global average pooling inside a chain, [N, C, H, W] -> [N, C, 1, 1] in the input's layout (a
// squeeze-excite block's squeeze, whose output the convolution after it reads in the same layout
// family); float32 or bf16 (oneDNN accumulates in float32). ONNX's GlobalAveragePool (and ReduceMean over H and W, keepdims).
class GlobalPool : public Step {
   public:
    GlobalPool(const std::vector<int64_t> &src_dims, const std::string &src_layout, const std::string &dst_layout,
               const std::string &dtype)
        : GlobalPool([&] {
              const tag t = step_tag(src_layout, dst_layout, "a chain's global pooling");
              return global_pool_pd(step_dims(src_dims, "a chain's global pooling"), step_dt(dtype), t, t);
          }()) {}

    void check(const torch::Tensor &x, const torch::Tensor &out, const c10::optional<torch::Tensor> &residual,
               bool fused) const override {
        TORCH_CHECK_VALUE(!fused && !residual.has_value(), "a global pooling has no activation and no second input");
        check_layout(x, src_md_, nhwc_, "input");
        check_layout(out, dst_md_, nhwc_, "output");
    }
    void execute(const torch::Tensor &x, const torch::Tensor &out, const c10::optional<torch::Tensor> &,
                 bool) const override {
        prim_.run({x.data_ptr(), out.data_ptr()});
    }
    bool has_residual() const override { return false; }
    const memory::desc &src_desc() const override { return src_md_; }
    const memory::desc &dst_desc() const override { return dst_md_; }
    const memory::desc &residual_md() const override { return none_; }
    bool nhwc_src() const override { return nhwc_; }
    bool nhwc_dst() const override { return nhwc_; }
    std::string impl() const override { return prim_.impl(); }

   private:
    explicit GlobalPool(const dnnl::pooling_forward::primitive_desc &pd)
        : src_md_(pd.src_desc()), dst_md_(pd.dst_desc()), nhwc_(is_tag(src_md_, tag::nhwc)),
          prim_(pd, {{DNNL_ARG_SRC, src_md_}, {DNNL_ARG_DST, dst_md_}}) {}

    memory::desc src_md_, dst_md_, none_;
    bool nhwc_;
    Simple prim_;
};

// A per-channel scale inside a chain: out = x * s, x [N, C, H, W], s [N, C, 1, 1] (its second
// operand, passed as a convolution's residual is), both in one layout and type (float32 or bf16). A squeeze-excite
// block's excitation (ONNX's Mul of the block's input by its gate). May write over x. With `sum`,
// out = x * s + out (out holding a residual of x's shape first: `run_chain`'s `sum`), then
// `activation` (`append_eltwise`'s; fused: finite runs only): SE-ResNet's Mul, Add, Relu.
class ChannelScale : public Step {
   public:
    ChannelScale(const std::vector<int64_t> &src_dims, const std::string &src_layout, const std::string &dst_layout,
                 bool sum, const std::string &activation, const std::string &dtype)
        : ChannelScale(make(step_dims(src_dims, "a chain's channel scale"),
                            step_tag(src_layout, dst_layout, "a chain's channel scale"), sum, activation,
                            step_dt(dtype)),
                       sum, activation != "none") {}

    void check(const torch::Tensor &x, const torch::Tensor &out, const c10::optional<torch::Tensor> &scale,
               bool fused) const override {
        TORCH_CHECK_VALUE(fused == activation_, activation_ ? "this channel scale's activation is fused: pass fused"
                                                            : "a channel scale without an activation fuses none");
        TORCH_CHECK_VALUE(scale.has_value(), "a channel scale multiplies by its second input: pass it");
        check_layout(x, src_md_, nhwc_, "input");
        check_layout(out, src_md_, nhwc_, "output");
        check_layout(*scale, scale_md_, nhwc_, "scale");
    }
    void execute(const torch::Tensor &x, const torch::Tensor &out, const c10::optional<torch::Tensor> &scale,
                 bool) const override {
        prim_.run({x.data_ptr(), scale->data_ptr(), out.data_ptr()});
    }
    bool has_residual() const override { return true; }
    bool has_fused() const override { return activation_; }
    bool in_place() const override { return !sum_; }  // with a sum, the output holds the residual
    const memory::desc &src_desc() const override { return src_md_; }
    const memory::desc &dst_desc() const override { return src_md_; }
    const memory::desc &residual_md() const override { return scale_md_; }
    bool nhwc_src() const override { return nhwc_; }
    bool nhwc_dst() const override { return nhwc_; }
    std::string impl() const override { return prim_.impl(); }

   private:
    ChannelScale(const dnnl::binary::primitive_desc &pd, bool sum, bool activation)
        : src_md_(pd.src_desc(0)), scale_md_(pd.src_desc(1)), nhwc_(is_tag(src_md_, tag::nhwc)), sum_(sum),
          activation_(activation),
          prim_(pd, {{DNNL_ARG_SRC_0, src_md_}, {DNNL_ARG_SRC_1, scale_md_}, {DNNL_ARG_DST, src_md_}}) {}

    static dnnl::binary::primitive_desc make(const memory::dims &d, tag t, bool sum, const std::string &activation,
                                             dt type) {
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        dnnl::post_ops po;
        if (sum) po.append_sum(1.f);
        append_eltwise(po, activation, 0.0, 0.0);
        attr.set_post_ops(po);
        const memory::desc x(d, type, t);
        return dnnl::binary::primitive_desc(cpu_engine(), dnnl::algorithm::binary_mul, x,
                                            memory::desc({d[0], d[1], 1, 1}, type, t), x, attr);
    }

    memory::desc src_md_, scale_md_;
    bool nhwc_, sum_, activation_;
    Simple prim_;
};

// A layer's weight reordered once per layout a primitive asks for, shared by every primitive that
// asks for it (one copy per distinct layout: `copies`).
class PackedWeights {
   public:
    // The weight `user` (in its plain layout) in layout `md`, and the buffer holding it.
    std::pair<memory, torch::Tensor> get(const memory::desc &md, memory user) {
        for (auto &entry : layouts_)
            if (entry.first == md) return {memory(md, cpu_engine(), entry.second.data_ptr()), entry.second};
        torch::Tensor buf = torch::empty({static_cast<int64_t>(std::max<size_t>(md.get_size(), 1))}, torch::kUInt8);
        memory dst(md, cpu_engine(), buf.data_ptr());
        dnnl::stream &s = cpu_stream();
        dnnl::reorder(user, dst).execute(s, user, dst);
        s.wait();
        layouts_.emplace_back(md, buf);
        return {dst, buf};
    }
    int64_t copies() const { return static_cast<int64_t>(layouts_.size()); }
    // Drops the copies no live primitive holds (after a chain's other layout was chosen).
    void release_unused() {
        layouts_.erase(std::remove_if(layouts_.begin(), layouts_.end(),
                                      [](const auto &e) { return e.second.use_count() == 1; }),
                       layouts_.end());
    }

   private:
    std::vector<std::pair<memory::desc, torch::Tensor>> layouts_;
};

// INT8 quantization of a layer (all values per tensor but the weight's scales, per output channel).
struct Quant {
    dt src = dt::f32, dst = dt::f32, sum = dt::undef;
    float src_scale = 1.f, dst_scale = 1.f, sum_scale = 1.f;
    int32_t src_zp = 0, dst_zp = 0, sum_zp = 0;
    torch::Tensor w_scales;
};

// One convolution layer's constants and attributes; `prepare` makes its primitives for an input shape.
class Layer {
   public:
    Layer(torch::Tensor weight, c10::optional<torch::Tensor> bias, std::vector<int64_t> strides,
          std::vector<int64_t> dilations, int64_t groups, std::string activation, double alpha, double beta,
          bool residual, std::string src_dtype, std::string dst_dtype, c10::optional<torch::Tensor> w_scales,
          double src_scale, int64_t src_zp, double dst_scale, int64_t dst_zp, std::string sum_dtype,
          double sum_scale, int64_t sum_zp)
        : strides_(std::move(strides)), dilations_(std::move(dilations)), groups_(groups),
          activation_(std::move(activation)), alpha_(alpha), beta_(beta), residual_(residual) {
        int8_ = weight.scalar_type() == at::kChar;
        TORCH_CHECK_VALUE(weight.dim() == 4 && (weight.scalar_type() == at::kFloat || int8_),
                          "weight must be a 4-D float32 or int8 tensor [O, I/groups, kh, kw], got ",
                          weight.scalar_type(), " ", weight.sizes());
        q_.src = to_dt(src_dtype);
        q_.dst = to_dt(dst_dtype);
        bf16_ = q_.src == dt::bf16;
        TORCH_CHECK_VALUE(int8_ ? eight_bit(q_.src) : q_.src == dt::f32 || bf16_,
                          "an int8 weight needs u8/s8 activations, a float32 one f32 or bf16");
        TORCH_CHECK_VALUE(int8_ ? eight_bit(q_.dst) || q_.dst == dt::f32
                                : q_.dst == dt::f32 || (bf16_ && q_.dst == dt::bf16),
                          "an INT8 layer writes u8, s8 or f32, a float32 layer f32, a bf16 one bf16 or f32");
        if (int8_) {
            TORCH_CHECK_VALUE(w_scales.has_value() && w_scales->numel() == weight.size(0),
                              "an int8 weight needs one scale per output channel");
            q_.w_scales = w_scales->to(torch::kFloat).contiguous().clone();
            q_.src_scale = static_cast<float>(src_scale);
            q_.src_zp = static_cast<int32_t>(src_zp);
            q_.dst_scale = static_cast<float>(dst_scale);
            q_.dst_zp = static_cast<int32_t>(dst_zp);
            q_.sum = sum_dtype.empty() ? dt::undef : to_dt(sum_dtype);
            q_.sum_scale = static_cast<float>(sum_scale);
            q_.sum_zp = static_cast<int32_t>(sum_zp);
            auto scalar = [](auto v, auto type) { return torch::full({1}, v, type); };
            consts_ = {scalar(q_.src_scale, torch::kFloat), scalar(q_.dst_scale, torch::kFloat),
                       scalar(q_.src_zp, torch::kInt), scalar(q_.dst_zp, torch::kInt)};
        }
        TORCH_CHECK_VALUE(groups >= 1 && weight.size(0) % groups == 0, "output channels ", weight.size(0),
                          " not divisible by groups ", groups);
        TORCH_CHECK_VALUE(strides_.size() == 2 && dilations_.size() == 2, "strides and dilations need 2 values");
        dnnl::post_ops probe;
        append_eltwise(probe, activation_, alpha_, beta_);  // an unknown activation fails here, naming the known
        weight_ = weight.contiguous();
        const int64_t oc = weight_.size(0);
        bias_ = bias ? bias->to(torch::kFloat).reshape({-1}).contiguous().clone() : torch::zeros({oc}, torch::kFloat);
        TORCH_CHECK_VALUE(bias_.numel() == oc, "bias has ", bias_.numel(), " values for ", oc, " output channels");
    }

    // `src_layout` / `dst_layout` (`to_tag`): "nhwc" for Ember's tensors; a float layer inside a
    // chain may read "nchw" (the chain's image) or "blocked", and write "blocked".
    std::unique_ptr<Conv> prepare(const std::vector<int64_t> &src_dims, const std::vector<int64_t> &pad_l,
                                  const std::vector<int64_t> &pad_r, const std::string &src_layout = "nhwc",
                                  const std::string &dst_layout = "nhwc") {
        TORCH_CHECK_VALUE(src_dims.size() == 4 && pad_l.size() == 2 && pad_r.size() == 2,
                          "src_dims must be [N, C, H, W] and pads 2 values each");
        const tag st = to_tag(src_layout), dtag = to_tag(dst_layout);
        TORCH_CHECK_VALUE(!int8_ || (st == tag::nhwc && dtag == tag::nhwc), "an INT8 layer reads and writes nhwc");
        TORCH_CHECK_VALUE(dtag != tag::nchw, "a convolution writes nhwc or blocked, not nchw");
        const int64_t oc = weight_.size(0), kh = weight_.size(2), kw = weight_.size(3);
        TORCH_CHECK_VALUE(src_dims[1] == weight_.size(1) * groups_, "input has ", src_dims[1],
                          " channels, the weight expects ", weight_.size(1) * groups_, " (", groups_, " groups)");
        auto out_size = [&](int i) {
            int64_t k = i == 0 ? kh : kw;
            return (src_dims[2 + i] + pad_l[i] + pad_r[i] - ((k - 1) * dilations_[i] + 1)) / strides_[i] + 1;
        };
        memory::dims sd(src_dims.begin(), src_dims.end());
        memory::dims dd{src_dims[0], oc, out_size(0), out_size(1)};
        TORCH_CHECK_VALUE(dd[0] > 0 && dd[2] > 0 && dd[3] > 0, "the convolution's output would be empty: [",
                          dd[0], ", ", dd[1], ", ", dd[2], ", ", dd[3], "]");
        // INT8 always fuses the activation (it must come before the requantization; no NaN in 8 bits)
        auto exact = make(sd, dd, pad_l, pad_r, st, dtag, int8_ && activation_ != "none");
        std::unique_ptr<Primitive> fused;
        if (activation_ != "none" && !int8_)
            fused = std::make_unique<Primitive>(make(sd, dd, pad_l, pad_r, st, dtag, true));
        std::unique_ptr<Primitive> summed;  // fp32 residual in place, for chains (finite runs: fused)
        if (residual_ && !int8_)
            summed = std::make_unique<Primitive>(make(sd, dd, pad_l, pad_r, st, dtag, activation_ != "none", true));
        auto &eng = cpu_engine();
        memory bias(memory::desc({oc}, dt::f32, tag::x), eng, bias_.data_ptr());
        Args extra;
        if (int8_) {
            auto f32 = [&](const torch::Tensor &t) { return memory(memory::desc({t.numel()}, dt::f32, tag::x), eng, t.data_ptr()); };
            auto s32 = [&](const torch::Tensor &t) { return memory(memory::desc({1}, dt::s32, tag::x), eng, t.data_ptr()); };
            extra.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, f32(consts_[0]));
            extra.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, f32(q_.w_scales));
            if (q_.dst != dt::f32) extra.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST, f32(consts_[1]));
            if (q_.src_zp) extra.emplace_back(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, s32(consts_[2]));
            if (q_.dst_zp && q_.dst != dt::f32) extra.emplace_back(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_DST, s32(consts_[3]));
        }
        return std::make_unique<Conv>(std::move(exact), std::move(fused), std::move(bias), residual_ && !int8_,
                                      std::move(extra), std::move(summed));
    }

    // This layer (a float 1x1 convolution, stride 1, unpadded, no groups or residual) and the 3x3
    // depthwise layer `dw` that reads its output (stride 1 or 2, pad 1 on every side), as one
    // primitive: oneDNN's depthwise post-op (`append_dw`), which computes the depthwise rows from
    // the 1x1's rows while they are in cache instead of writing the expanded tensor out and reading
    // it back. Both activations are fused (a chain runs only on finite inputs: "fused" primitives),
    // so the returned convolution's plain primitive already holds them. For an input of
    // `src_dims` laid out as `src_layout`, writing the depthwise output as `dst_layout` ("nhwc" or
    // "blocked"). `nullptr` (None) where oneDNN offers only `ref_fused_convolution` for it (the two
    // primitives run one after the other, no fusion: slower than the pair) unless `reference_ok`,
    // or where its output would not have the depthwise layer's shape.
    // `pads` and `dw_pads`: each layer's [top, left, bottom, right] (0s and 1s: checked).
    std::unique_ptr<Conv> prepare_dw(Layer &dw, const std::vector<int64_t> &src_dims, const std::vector<int64_t> &pads,
                                     const std::vector<int64_t> &dw_pads, const std::string &src_layout,
                                     const std::string &dst_layout, bool reference_ok) {
        const int64_t oc = weight_.size(0);
        const std::vector<int64_t> ones{1, 1};
        TORCH_CHECK_VALUE(pads == std::vector<int64_t>(4, 0) && dw_pads == std::vector<int64_t>(4, 1),
                          "a depthwise pair is an unpadded 1x1 convolution, then a depthwise one padded by 1 on "
                          "every side");
        TORCH_CHECK_VALUE(!int8_ && !dw.int8_ && bf16_ == dw.bf16_ && q_.dst == dw.q_.src,
                          "a depthwise pair is two float layers of one precision, the first's output type the "
                          "second's input type");
        TORCH_CHECK_VALUE(weight_.size(2) == 1 && weight_.size(3) == 1 && groups_ == 1 && !residual_ &&
                              strides_ == ones && dilations_ == ones,
                          "a depthwise pair starts with a 1x1 stride-1 convolution without groups, dilation or "
                          "residual");
        TORCH_CHECK_VALUE(dw.groups_ == oc && dw.weight_.size(0) == oc && dw.weight_.size(1) == 1 &&
                              dw.weight_.size(2) == 3 && dw.weight_.size(3) == 3 && !dw.residual_ &&
                              dw.strides_[0] == dw.strides_[1] && (dw.strides_[0] == 1 || dw.strides_[0] == 2) &&
                              dw.dilations_ == ones,
                          "a depthwise pair ends with a 3x3 depthwise convolution (stride 1 or 2, no dilation or "
                          "residual) over the 1x1's ", oc, " channels");
        TORCH_CHECK_VALUE(src_dims.size() == 4 && src_dims[0] > 0 && src_dims[1] == weight_.size(1) &&
                              src_dims[2] > 0 && src_dims[3] > 0,
                          "a depthwise pair's input must be [N, ", weight_.size(1), ", H, W]");
        const tag st = to_tag(src_layout), dtag = to_tag(dst_layout);
        TORCH_CHECK_VALUE(dtag != tag::nchw, "a convolution writes nhwc or blocked, not nchw");
        const int64_t n = src_dims[0], h = src_dims[2], w = src_dims[3], s = dw.strides_[0];
        auto &eng = cpu_engine();
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        dnnl::post_ops po;
        append_activation(po);
        po.append_dw(float_dt(), dt::f32, dw.q_.dst, 3, s, 1);
        dw.append_activation(po);
        attr.set_post_ops(po);
        memory::dims sd(src_dims.begin(), src_dims.end()), mid{n, oc, h, w};
        auto pd = dnnl::convolution_forward::primitive_desc(
            eng, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
            memory::desc(sd, q_.src, st), memory::desc(weight_dims(), float_dt(), tag::any),
            memory::desc({oc}, dt::f32, tag::x), memory::desc(mid, q_.dst, dtag), memory::dims{1, 1},
            memory::dims{0, 0}, memory::dims{0, 0}, memory::dims{0, 0}, attr);
        while (!reference_ok && std::string(pd.impl_info_str()).rfind("ref", 0) == 0)
            if (!pd.next_impl()) return nullptr;
        const memory::dims want{n, oc, (h - 1) / s + 1, (w - 1) / s + 1};  // (h + 2 - 3) / s + 1
        if (pd.dst_desc().get_dims() != want) return nullptr;
        auto w1 = packed(pd.weights_desc());
        auto w2 = dw.packed(pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS));
        Args extra{{DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS, w2.first},
                   {DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_BIAS,
                    memory(pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_BIAS), eng,
                           dw.bias_.data_ptr())}};
        memory bias(memory::desc({oc}, dt::f32, tag::x), eng, bias_.data_ptr());
        Primitive p{pd, dnnl::convolution_forward(pd), w1.first, w1.second};
        return std::make_unique<Conv>(std::move(p), nullptr, std::move(bias), false, std::move(extra), nullptr,
                                      std::vector<torch::Tensor>{w2.second});
    }

    int64_t weight_copies() const { return packed_.copies(); }
    void release_unused() { packed_.release_unused(); }

   private:
    // The layer's activation as a oneDNN post-op (`append_eltwise`; none: nothing).
    void append_activation(dnnl::post_ops &po) const { append_eltwise(po, activation_, alpha_, beta_); }

    // A float layer's activations (and its binary residual's) type: bf16 or f32; the weight is
    // converted to it when it is packed.
    dt float_dt() const { return bf16_ ? dt::bf16 : dt::f32; }

    memory::dims weight_dims() const {
        const int64_t oc = weight_.size(0);
        return groups_ == 1 ? memory::dims{oc, weight_.size(1), weight_.size(2), weight_.size(3)}
                            : memory::dims{groups_, oc / groups_, weight_.size(1), weight_.size(2), weight_.size(3)};
    }

    Primitive make(const memory::dims &sd, const memory::dims &dd, const std::vector<int64_t> &pad_l,
                   const std::vector<int64_t> &pad_r, tag src_tag, tag dst_tag, bool with_activation,
                   bool sum_in_place = false) {
        auto &eng = cpu_engine();
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        dnnl::post_ops po;
        if (residual_ && int8_)  // dst = conv + sum_scale * (dst_old - sum_zp), dst_old read as sum's type
            po.append_sum(q_.sum_scale, q_.sum_zp, q_.sum);
        else if (residual_ && sum_in_place)  // dst = conv + dst_old
            po.append_sum(1.f);
        else if (residual_)
            po.append_binary(dnnl::algorithm::binary_add, memory::desc(dd, float_dt(), dst_tag));
        if (with_activation) append_activation(po);
        attr.set_post_ops(po);
        if (int8_) {
            attr.set_scales_mask(DNNL_ARG_SRC, 0);
            attr.set_scales_mask(DNNL_ARG_WEIGHTS, groups_ == 1 ? 1 : 3);  // per output channel
            if (q_.dst != dt::f32) attr.set_scales_mask(DNNL_ARG_DST, 0);
            if (q_.src_zp) attr.set_zero_points_mask(DNNL_ARG_SRC, 0);
            if (q_.dst_zp && q_.dst != dt::f32) attr.set_zero_points_mask(DNNL_ARG_DST, 0);
        }
        const dt wdt = int8_ ? dt::s8 : float_dt();
        auto pd = dnnl::convolution_forward::primitive_desc(
            eng, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
            memory::desc(sd, q_.src, src_tag), memory::desc(weight_dims(), wdt, tag::any),
            memory::desc({dd[1]}, dt::f32, tag::x), memory::desc(dd, q_.dst, dst_tag),
            memory::dims{strides_[0], strides_[1]}, memory::dims{dilations_[0] - 1, dilations_[1] - 1},
            memory::dims{pad_l[0], pad_l[1]}, memory::dims{pad_r[0], pad_r[1]}, attr);
        auto w = packed(pd.weights_desc());
        return Primitive{pd, dnnl::convolution_forward(pd), w.first, w.second};
    }

    // The weight in layout `md` (``PackedWeights``), from its OIHW / GOIHW layout.
    std::pair<memory, torch::Tensor> packed(const memory::desc &md) {
        return packed_.get(md, memory(memory::desc(weight_dims(), int8_ ? dt::s8 : dt::f32,
                                                   groups_ == 1 ? tag::oihw : tag::goihw),
                                      cpu_engine(), weight_.data_ptr()));
    }

    torch::Tensor weight_, bias_;
    std::vector<int64_t> strides_, dilations_;
    int64_t groups_;
    std::string activation_;
    double alpha_, beta_;
    bool residual_;
    bool int8_ = false;
    bool bf16_ = false;  // bf16 activations (the float32 weight packed as bf16, the bias kept f32)
    Quant q_;
    std::vector<torch::Tensor> consts_;  // INT8: src scale, dst scale, src zero point, dst zero point
    PackedWeights packed_;
};

// ----------------------------------------------------------------------------- INT8 GEMMs (QGemm)
//
// ``Linear`` holds one INT8 GEMM's constants: its s8 weight [N, K] (quantized per output column by
// the caller), reordered once per weight layout a primitive asks for (shared by every row count),
// its f32 bias, the per-column weight scales and the per-tensor source / output scales and zero
// points (runtime arguments, constant). ``Linear.prepare(m)`` makes the matmul primitive for m rows
// (``Matmul``); ``Matmul.run`` binds x [m, K] and out [m, N] (both row-major) and executes. The
// activation (ReLU, GELU erf / tanh, clip) is always fused before the requantization: 8-bit
// inputs hold no NaN.

void check_rows(const torch::Tensor &t, const memory::desc &md, const char *what) {
    const at::ScalarType want = to_scalar(md.get_data_type());
    TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == want, what, " must be a ", want,
                      " CPU tensor, got ", t.scalar_type(), " on ", t.device());
    auto d = md.get_dims();
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == d[0] && t.size(1) == d[1], what, " has shape ", t.sizes(),
                      ", the primitive was made for [", d[0], ", ", d[1], "]");
    TORCH_CHECK_VALUE(t.is_contiguous(), what, " must be contiguous (row-major)");
}

// Runs a one-input primitive (`pd`, `prim`) on NHWC tensors x -> out, checked against its descriptors.
template <typename PD, typename P>
void run_nhwc(const PD &pd, const P &prim, const torch::Tensor &x, const torch::Tensor &out) {
    check_nhwc(x, pd.src_desc(), "input");
    check_nhwc(out, pd.dst_desc(), "output");
    auto &eng = cpu_engine();
    std::unordered_map<int, memory> args;
    args.emplace(DNNL_ARG_SRC, memory(pd.src_desc(), eng, x.data_ptr()));
    args.emplace(DNNL_ARG_DST, memory(pd.dst_desc(), eng, out.data_ptr()));
    at::internal::lazy_init_num_threads();
    pybind11::gil_scoped_release nogil;
    run_primitive(pd, prim, args);
}

// ONNX's LRN across channels (odd `size`) as a oneDNN primitive on NHWC tensors, made once per
// shape: dst = src * (k + alpha / size * sum of src^2 over the channel window)^-beta, f32 or bf16.
class Lrn {
   public:
    Lrn(const std::vector<int64_t> &dims, int64_t size, double alpha, double beta, double k, const std::string &dtype)
        : pd_(make(dims, size, alpha, beta, k, dtype)), prim_(pd_) {}

    void run(const torch::Tensor &x, const torch::Tensor &out) const { run_nhwc(pd_, prim_, x, out); }

    std::string impl() const { return pd_.impl_info_str(); }

   private:
    static dnnl::lrn_forward::primitive_desc make(const std::vector<int64_t> &dims, int64_t size, double alpha,
                                                  double beta, double k, const std::string &dtype) {
        TORCH_CHECK_VALUE(dims.size() == 4, "LRN takes a 4-D [N, C, H, W] input");
        TORCH_CHECK_VALUE(size >= 1 && size % 2 == 1, "oneDNN's LRN window is centred: an odd size, not ", size);
        const dt d = to_dt(dtype);
        TORCH_CHECK_VALUE(d == dt::f32 || d == dt::bf16, "LRN data type must be f32 or bf16, not '", dtype, "'");
        memory::desc md(memory::dims(dims.begin(), dims.end()), d, tag::nhwc);
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        return dnnl::lrn_forward::primitive_desc(cpu_engine(), dnnl::prop_kind::forward_inference,
                                                 dnnl::algorithm::lrn_across_channels, md, md, size,
                                                 static_cast<float>(alpha), static_cast<float>(beta),
                                                 static_cast<float>(k), attr);
    }

    dnnl::lrn_forward::primitive_desc pd_;
    dnnl::lrn_forward prim_;
};

// 2-D max pooling as a oneDNN primitive on NHWC tensors, made once per shape (f32, bf16, or the
// 8-bit activations between INT8 layers): pads (begin, end per spatial dim) are never chosen, as
// ONNX's -inf pads.
class MaxPool {
   public:
    MaxPool(const std::vector<int64_t> &src, const std::vector<int64_t> &dst, const std::vector<int64_t> &kernel,
            const std::vector<int64_t> &strides, const std::vector<int64_t> &dilations,
            const std::vector<int64_t> &pad_l, const std::vector<int64_t> &pad_r, const std::string &dtype)
        : pd_(make(src, dst, kernel, strides, dilations, pad_l, pad_r, dtype)), prim_(pd_) {}

    void run(const torch::Tensor &x, const torch::Tensor &out) const { run_nhwc(pd_, prim_, x, out); }

    std::string impl() const { return pd_.impl_info_str(); }

   private:
    static dnnl::pooling_forward::primitive_desc make(const std::vector<int64_t> &src, const std::vector<int64_t> &dst,
                                                      const std::vector<int64_t> &kernel,
                                                      const std::vector<int64_t> &strides,
                                                      const std::vector<int64_t> &dilations,
                                                      const std::vector<int64_t> &pad_l,
                                                      const std::vector<int64_t> &pad_r, const std::string &dtype) {
        TORCH_CHECK_VALUE(src.size() == 4 && dst.size() == 4 && kernel.size() == 2 && strides.size() == 2 &&
                              dilations.size() == 2 && pad_l.size() == 2 && pad_r.size() == 2,
                          "2-D max pooling takes 4-D shapes and 2 values per window attribute");
        const dt d = to_dt(dtype);  // f32, bf16, u8 or s8
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        return dnnl::pooling_forward::primitive_desc(
            cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_max,
            memory::desc(memory::dims(src.begin(), src.end()), d, tag::nhwc),
            memory::desc(memory::dims(dst.begin(), dst.end()), d, tag::nhwc), memory::dims(strides.begin(), strides.end()),
            memory::dims(kernel.begin(), kernel.end()), memory::dims{dilations[0] - 1, dilations[1] - 1},
            memory::dims(pad_l.begin(), pad_l.end()), memory::dims(pad_r.begin(), pad_r.end()), attr);
    }

    dnnl::pooling_forward::primitive_desc pd_;
    dnnl::pooling_forward prim_;
};

class Matmul {
   public:
    Matmul(dnnl::matmul::primitive_desc pd, memory weights, memory bias, Args extra)
        : pd_(std::move(pd)), prim_(pd_), weights_(std::move(weights)), bias_(std::move(bias)),
          extra_(std::move(extra)) {}

    void run(const torch::Tensor &x, const torch::Tensor &out) const {
        check_rows(x, pd_.src_desc(), "input");
        check_rows(out, pd_.dst_desc(), "output");
        auto &eng = cpu_engine();
        std::unordered_map<int, memory> args(extra_.begin(), extra_.end());
        args.emplace(DNNL_ARG_SRC, memory(pd_.src_desc(), eng, x.data_ptr()));
        args.emplace(DNNL_ARG_DST, memory(pd_.dst_desc(), eng, out.data_ptr()));
        args.emplace(DNNL_ARG_WEIGHTS, weights_);
        if (bias_) args.emplace(DNNL_ARG_BIAS, bias_);
        at::internal::lazy_init_num_threads();  // this thread's OpenMP team size = torch's
        pybind11::gil_scoped_release nogil;
        run_primitive(pd_, prim_, args);
    }

    std::vector<int64_t> dst_dims() const {
        auto d = pd_.dst_desc().get_dims();
        return {d.begin(), d.end()};
    }
    std::string impl() const { return pd_.impl_info_str(); }
    int64_t scratchpad_bytes() const { return static_cast<int64_t>(pd_.scratchpad_desc().get_size()); }

   private:
    dnnl::matmul::primitive_desc pd_;
    dnnl::matmul prim_;
    memory weights_, bias_;
    Args extra_;
};

class Linear {
   public:
    Linear(torch::Tensor weight, c10::optional<torch::Tensor> bias, torch::Tensor w_scales, std::string activation,
           double alpha, double beta, std::string src_dtype, double src_scale, int64_t src_zp,
           std::string dst_dtype, double dst_scale, int64_t dst_zp)
        : activation_(std::move(activation)), alpha_(alpha), beta_(beta) {
        TORCH_CHECK_VALUE(weight.dim() == 2 && weight.scalar_type() == at::kChar,
                          "weight must be a 2-D int8 tensor [N, K], got ", weight.scalar_type(), " ", weight.sizes());
        TORCH_CHECK_VALUE(weight.size(0) > 0 && weight.size(1) > 0, "weight is empty: ", weight.sizes());
        q_.src = to_dt(src_dtype);
        q_.dst = to_dt(dst_dtype);
        TORCH_CHECK_VALUE(eight_bit(q_.src), "an INT8 GEMM reads u8 or s8 activations");
        TORCH_CHECK_VALUE(eight_bit(q_.dst) || q_.dst == dt::f32, "an INT8 GEMM writes u8, s8 or f32");
        TORCH_CHECK_VALUE(w_scales.numel() == weight.size(0), "w_scales has ", w_scales.numel(), " values for ",
                          weight.size(0), " output columns");
        TORCH_CHECK_VALUE(activation_ == "none" || activation_ == "relu" || activation_ == "clip" ||
                              activation_ == "gelu_erf" || activation_ == "gelu_tanh",
                          "activation must be none, relu, clip, gelu_erf or gelu_tanh, got '", activation_, "'");
        weight_ = weight.contiguous();
        q_.w_scales = w_scales.to(torch::kFloat).reshape({-1}).contiguous().clone();
        q_.src_scale = static_cast<float>(src_scale);
        q_.src_zp = static_cast<int32_t>(src_zp);
        q_.dst_scale = static_cast<float>(dst_scale);
        q_.dst_zp = static_cast<int32_t>(dst_zp);
        auto scalar = [](auto v, auto type) { return torch::full({1}, v, type); };
        consts_ = {scalar(q_.src_scale, torch::kFloat), scalar(q_.dst_scale, torch::kFloat),
                   scalar(q_.src_zp, torch::kInt), scalar(q_.dst_zp, torch::kInt)};
        if (bias) {
            bias_ = bias->to(torch::kFloat).reshape({1, -1}).contiguous().clone();
            TORCH_CHECK_VALUE(bias_.numel() == weight_.size(0), "bias has ", bias_.numel(), " values for ",
                              weight_.size(0), " output columns");
        }
    }

    std::unique_ptr<Matmul> prepare(int64_t m) {
        TORCH_CHECK_VALUE(m > 0, "an INT8 GEMM needs at least one row, got ", m);
        const int64_t n = weight_.size(0), k = weight_.size(1);
        auto &eng = cpu_engine();
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        dnnl::post_ops po;
        const float a = static_cast<float>(alpha_), b = static_cast<float>(beta_);
        if (activation_ == "relu") po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
        if (activation_ == "clip") po.append_eltwise(dnnl::algorithm::eltwise_clip, a, b);
        if (activation_ == "gelu_erf") po.append_eltwise(dnnl::algorithm::eltwise_gelu_erf, 0.f, 0.f);
        if (activation_ == "gelu_tanh") po.append_eltwise(dnnl::algorithm::eltwise_gelu_tanh, 0.f, 0.f);
        attr.set_post_ops(po);
        const bool qdst = q_.dst != dt::f32;
        attr.set_scales_mask(DNNL_ARG_SRC, 0);
        attr.set_scales_mask(DNNL_ARG_WEIGHTS, 1 << 1);  // per column of the [K, N] weight
        if (qdst) attr.set_scales_mask(DNNL_ARG_DST, 0);
        if (q_.src_zp) attr.set_zero_points_mask(DNNL_ARG_SRC, 0);
        if (qdst && q_.dst_zp) attr.set_zero_points_mask(DNNL_ARG_DST, 0);
        memory::desc bias_md = bias_.defined() ? memory::desc({1, n}, dt::f32, tag::ab) : memory::desc();
        auto pd = dnnl::matmul::primitive_desc(eng, memory::desc({m, k}, q_.src, tag::ab),
                                               memory::desc({k, n}, dt::s8, tag::any), bias_md,
                                               memory::desc({m, n}, q_.dst, tag::ab), attr);
        memory bias = bias_.defined() ? memory(bias_md, eng, bias_.data_ptr()) : memory();
        auto f32 = [&](const torch::Tensor &t) { return memory(memory::desc({t.numel()}, dt::f32, tag::x), eng, t.data_ptr()); };
        auto s32 = [&](const torch::Tensor &t) { return memory(memory::desc({1}, dt::s32, tag::x), eng, t.data_ptr()); };
        Args extra;
        extra.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, f32(consts_[0]));
        extra.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, f32(q_.w_scales));
        if (qdst) extra.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST, f32(consts_[1]));
        if (q_.src_zp) extra.emplace_back(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, s32(consts_[2]));
        if (qdst && q_.dst_zp) extra.emplace_back(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_DST, s32(consts_[3]));
        memory w = packed(pd.weights_desc());
        return std::make_unique<Matmul>(std::move(pd), std::move(w), std::move(bias), std::move(extra));
    }

    int64_t weight_copies() const { return packed_.copies(); }

   private:
    // The weight in layout `md` (``PackedWeights``): [N, K] row-major is the [K, N] matrix in
    // column-major order (tag ba).
    memory packed(const memory::desc &md) {
        return packed_.get(md, memory(memory::desc({weight_.size(1), weight_.size(0)}, dt::s8, tag::ba), cpu_engine(),
                                      weight_.data_ptr())).first;  // kept: Linear never releases copies
    }

    torch::Tensor weight_, bias_;
    std::string activation_;
    double alpha_, beta_;
    Quant q_;
    std::vector<torch::Tensor> consts_;  // src scale, dst scale, src zero point, dst zero point
    PackedWeights packed_;
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

// Buffers for a chain's outputs, kept by the calling thread across runs. The C library often
// serves a large allocation with fresh pages (glibc: over its mmap threshold, at most 32 MiB, or
// after trimming the heap's top), which the first kernel to write them pays for in page faults:
// MobileNetV2's 96x112x112 expansion at batch 8 in f32 (38.5 MB) took 10.0 ms with a fresh output
// against 1.5 ms with a reused one, and the whole batch-1 MobileNetV2 run 5.3 ms against 3.9 ms.
// A released output of at least `min_bytes` whose buffer nothing else holds comes back here; an
// output that size takes the smallest buffer that fits. `EMBER_CHAIN_POOL_MB` sets the threshold
// (default 0.25; 0 turns the pool off); at most `kMaxBuffers` buffers and `kMaxBytes` (1 GiB) are
// kept: about the chain's peak working set, held between runs as ONNX Runtime's arena holds it.
class BufferPool {
   public:
    static BufferPool &local() {
        thread_local BufferPool pool;
        return pool;
    }

    // A channels-last CPU tensor of `dims` and `type`: on a pooled buffer (or a new one the pool
    // may keep later) from `min_bytes` up, a plain allocation below.
    torch::Tensor output(const std::vector<int64_t> &dims, c10::ScalarType type) {
        const int64_t bytes = c10::multiply_integers(dims) * static_cast<int64_t>(c10::elementSize(type));
        return wrap(storage(bytes), dims, c10::get_channels_last_strides_2d(dims), type);
    }

    // A buffer for a tensor of descriptor `md` and `type`: `output` where `md` is channels-last
    // (`nhwc`), else a flat one of md's size (a oneDNN blocked layout's, channels padded), pooled alike.
    torch::Tensor like(const memory::desc &md, bool nhwc, c10::ScalarType type) {
        if (nhwc) {
            const auto d = md.get_dims();
            return output({d.begin(), d.end()}, type);
        }
        const int64_t size = static_cast<int64_t>(c10::elementSize(type));
        const int64_t n = (static_cast<int64_t>(md.get_size()) + size - 1) / size;
        return wrap(storage(n * size), {n}, {1}, type);
    }

    // A CPU tensor of `type` viewing `storage` with `dims` and `strides`, made without the operator
    // dispatcher: torch::empty then set_ were two dispatched calls a chain step. Per round, same
    // process (twenty-first session, 16 rounds): 50 tiny 1x1 layers 1.07x (2 threads) and 1.11x
    // (1 thread) faster, MobileNetV3-small b1 1.02-1.03x, MobileNetV2 b1 1.00x and b8 0.99x,
    // EfficientNet-B0 b1 1.00x, ResNet-50 b1 1.00x.
    static torch::Tensor wrap(c10::Storage storage, c10::IntArrayRef dims, c10::IntArrayRef strides,
                              c10::ScalarType type) {
        auto t = at::detail::make_tensor<c10::TensorImpl>(std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                          c10::scalarTypeToTypeMeta(type));
        t.unsafeGetTensorImpl()->set_sizes_and_strides(dims, strides);
        return t;
    }

    // `bytes` for a step's output: a pooled buffer from `min_bytes` up (`take`), new memory below.
    c10::Storage storage(int64_t bytes) { return bytes < min_bytes_ ? fresh(bytes) : take(bytes); }

    // `bytes` of new CPU memory from PyTorch's CPU allocator, resizable, as torch::empty makes it
    // (a chain's last output reaches the caller).
    static c10::Storage fresh(int64_t bytes) {
        return c10::Storage(c10::Storage::use_byte_size_t(), bytes, c10::GetCPUAllocator(), /*resizable=*/true);
    }

    // Keeps `t`'s buffer if it is one `output` would take (`min_bytes` or more), nothing but `t`
    // holds it (no alias, no view, not returned), and the pool stays within `kMaxBuffers` buffers
    // and `kMaxBytes` bytes (the smallest kept go first).
    void give(const torch::Tensor &t) {
        if (!t.defined() || t.use_count() != 1 || t.storage().use_count() != 1) return;
        const size_t bytes = t.storage().nbytes();
        if (static_cast<int64_t>(bytes) < min_bytes_ || bytes > kMaxBytes) return;  // no output would take it
        auto by_size = [](const c10::Storage &a, const c10::Storage &b) { return a.nbytes() < b.nbytes(); };
        while (!free_.empty() && (free_.size() >= kMaxBuffers || held_ + bytes > kMaxBytes)) {
            auto smallest = std::min_element(free_.begin(), free_.end(), by_size);
            if (smallest->nbytes() >= bytes) return;
            held_ -= smallest->nbytes();
            free_.erase(smallest);
        }
        free_.push_back(t.storage());
        held_ += bytes;
    }

   private:
    // The smallest kept buffer of at least `bytes`, or a new one.
    c10::Storage take(int64_t bytes) {
        auto best = free_.end();
        for (auto it = free_.begin(); it != free_.end(); ++it)
            if (it->nbytes() >= static_cast<size_t>(bytes) && (best == free_.end() || it->nbytes() < best->nbytes()))
                best = it;
        c10::Storage storage;
        if (best != free_.end()) {
            storage = *best;
            held_ -= best->nbytes();
            free_.erase(best);
        } else {
            storage = fresh(bytes);
        }
        return storage;
    }

    BufferPool() {
        const char *env = std::getenv("EMBER_CHAIN_POOL_MB");
        const double mb = env != nullptr ? std::atof(env) : 0.25;
        min_bytes_ = mb > 0 ? static_cast<int64_t>(mb * 1024 * 1024) : INT64_MAX;
    }
    static constexpr size_t kMaxBuffers = 32;
    static constexpr size_t kMaxBytes = size_t{1} << 30;
    int64_t min_bytes_;
    size_t held_ = 0;  // bytes in `free_`
    std::vector<c10::Storage> free_;
};

// `src` (laid out as `from`) copied into `dst` (laid out as `to`) by a oneDNN reorder, made once per
// pair of layouts on the calling thread. Callable without the GIL.
void reorder_into(void *src, const memory::desc &from, void *dst, const memory::desc &to) {
    thread_local std::vector<std::tuple<memory::desc, memory::desc, dnnl::reorder>> made;
    auto &eng = cpu_engine();
    memory s(from, eng, src), d(to, eng, dst);
    dnnl::reorder *prim = nullptr;
    for (auto &m : made)
        if (std::get<0>(m) == from && std::get<1>(m) == to) prim = &std::get<2>(m);
    if (prim == nullptr) {
        if (made.size() >= 64) made.erase(made.begin());
        made.emplace_back(from, to, dnnl::reorder(s, d));
        prim = &std::get<2>(made.back());
    }
    dnnl::stream &strm = cpu_stream();
    prim->execute(strm, s, d);
    strm.wait();
}

// The descriptor of a 4-D tensor that is channels-last or contiguous (NCHW).
memory::desc desc_of(const torch::Tensor &t) {
    TORCH_CHECK_VALUE(t.dim() == 4, "a chain's input must be 4-D, got ", t.sizes());
    const bool cl = t.is_contiguous(at::MemoryFormat::ChannelsLast);
    TORCH_CHECK_VALUE(cl || t.is_contiguous(), "a chain's input must be channels-last or contiguous");
    return memory::desc(memory::dims(t.sizes().begin(), t.sizes().end()), to_dt(t.scalar_type()),
                        cl ? tag::nhwc : tag::nchw);
}

// ----------------------------------------------------------------------------- a chain's head
//
// What a CNN ends with after its last convolution: global average pooling over H x W, then
// optionally a classifier of one or more float32 dense layers, y = act(x . W^T + b) each (ONNX's
// GlobalAveragePool, Flatten, then Gemm / MatMul, or FusedGemm with its activation fused:
// MobileNetV3's Linear -> HardSwish -> Linear). ``HeadLayer`` holds the dense layers' weights [O, C]
// (packed once per layout a primitive asks for, as ``Layer``'s), biases and activations;
// ``HeadLayer.prepare`` makes a ``Head`` that reads the last convolution's output as the chain keeps
// it (channels-last or blocked) in oneDNN's pooling and inner-product primitives: no reorder back
// to channels-last, the GEMVs on oneDNN's threads with their weights prepacked (twice as fast as
// PyTorch's linear at batch 1 on MobileNetV3's classifier), and no return to Python between the
// layers (each layer after a chain paid about 0.1 ms of Python on a cache the chain had swept:
// docs/CPU_NATIVE.md, "Chain heads"). Float32 only.

// One dense layer of a head as prepared for its input: the inner product, its packed weight (and
// the buffer that holds it) and its bias.
struct Dense {
    dnnl::inner_product_forward::primitive_desc pd;
    dnnl::inner_product_forward prim;
    memory weights;
    torch::Tensor weight_buf;
    memory bias;
};

class Head {
   public:
    Head(dnnl::pooling_forward::primitive_desc pool, std::vector<Dense> dense, std::vector<int64_t> out_dims)
        : pool_pd_(std::move(pool)), pool_(pool_pd_), dense_(std::move(dense)), out_dims_(std::move(out_dims)),
          nhwc_src_(is_tag(pool_pd_.src_desc(), tag::nhwc)) {}

    memory::desc src_desc() const { return pool_pd_.src_desc(); }
    std::vector<int64_t> dst_dims() const { return out_dims_; }
    bool has_classifier() const { return !dense_.empty(); }
    int64_t dense_layers() const { return static_cast<int64_t>(dense_.size()); }
    std::string impl() const {
        std::string s = pool_pd_.impl_info_str();
        for (const auto &d : dense_) s += std::string(" + ") + d.pd.impl_info_str();
        return s;
    }

    // `x` (laid out as `src_desc`) -> a new contiguous float32 tensor of `dst_dims`; no Python
    // (callable without the GIL). `ms`: where the pooling's and the dense layers' milliseconds go.
    torch::Tensor execute(const torch::Tensor &x, double *ms = nullptr) const {
        const auto t0 = std::chrono::steady_clock::now();
        auto &eng = cpu_engine();
        auto y = torch::empty(out_dims_, torch::TensorOptions().dtype(torch::kFloat32));
        torch::Tensor cur = y;
        if (!dense_.empty()) {  // the pooled [N, C, 1, 1] in the first layer's source layout (small: N * C padded)
            const int64_t n = static_cast<int64_t>((pool_pd_.dst_desc().get_size() + 3) / 4);
            cur = torch::empty({n}, torch::TensorOptions().dtype(torch::kFloat32));
        }
        std::unordered_map<int, memory> args;
        args.emplace(DNNL_ARG_SRC, memory(pool_pd_.src_desc(), eng, x.data_ptr()));
        args.emplace(DNNL_ARG_DST, memory(pool_pd_.dst_desc(), eng, cur.data_ptr()));
        run_primitive(pool_pd_, pool_, args);
        const auto t1 = std::chrono::steady_clock::now();
        for (size_t k = 0; k < dense_.size(); ++k) {
            const Dense &d = dense_[k];
            torch::Tensor out = k + 1 == dense_.size()
                                    ? y
                                    : torch::empty({static_cast<int64_t>(d.pd.dst_desc().get_size() / 4)},
                                                   torch::TensorOptions().dtype(torch::kFloat32));
            std::unordered_map<int, memory> ip_args;
            ip_args.emplace(DNNL_ARG_SRC, memory(d.pd.src_desc(), eng, cur.data_ptr()));
            ip_args.emplace(DNNL_ARG_WEIGHTS, d.weights);
            if (d.bias) ip_args.emplace(DNNL_ARG_BIAS, d.bias);
            ip_args.emplace(DNNL_ARG_DST, memory(d.pd.dst_desc(), eng, out.data_ptr()));
            run_primitive(d.pd, d.prim, ip_args);
            cur = out;
        }
        if (ms != nullptr) {
            ms[0] = std::chrono::duration<double, std::milli>(t1 - t0).count();
            ms[1] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
        }
        return y;
    }

    // The head on its own (tests): x checked against the layout it was made for.
    torch::Tensor run(const torch::Tensor &x) const {
        check_layout(x, src_desc(), nhwc_src_, "input");
        at::internal::lazy_init_num_threads();
        pybind11::gil_scoped_release nogil;
        return execute(x);
    }

   private:
    dnnl::pooling_forward::primitive_desc pool_pd_;
    dnnl::pooling_forward pool_;
    std::vector<Dense> dense_;
    std::vector<int64_t> out_dims_;
    bool nhwc_src_;
};

class HeadLayer {
   public:
    // `weight` [O, C] float32 (the first dense layer's, as Gemm with transB reads it), `bias` [O]
    // and its activation (`append_eltwise`'s); no weight: the head only pools. `then` adds layers.
    HeadLayer(c10::optional<torch::Tensor> weight, c10::optional<torch::Tensor> bias, const std::string &activation,
              double alpha, double beta) {
        if (weight) {
            then(*weight, bias, activation, alpha, beta);
        } else {
            TORCH_CHECK_VALUE(!bias && activation == "none",
                              "a head without a classifier weight takes no bias and no activation");
        }
    }

    // Appends a dense layer reading the previous one's output: `weight` [O, C] with C the previous
    // layer's O, `bias` [O] or none, then `activation`.
    void then(const torch::Tensor &weight, const c10::optional<torch::Tensor> &bias, const std::string &activation,
              double alpha, double beta) {
        TORCH_CHECK_VALUE(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.numel() > 0,
                          "a head's dense weight must be a non-empty 2-D float32 tensor [O, C], got ",
                          weight.scalar_type(), " ", weight.sizes());
        TORCH_CHECK_VALUE(layers_.empty() || weight.size(1) == layers_.back().weight.size(0), "a head's dense layer ",
                          layers_.size(), " reads ", weight.size(1), " values, the layer before writes ",
                          layers_.empty() ? 0 : layers_.back().weight.size(0));
        dnnl::post_ops probe;
        append_eltwise(probe, activation, alpha, beta);  // an unknown activation fails here, not in `prepare`
        Spec s{weight.contiguous(), torch::Tensor(), activation, alpha, beta, std::make_unique<PackedWeights>()};
        if (bias) {
            s.bias = bias->to(torch::kFloat).reshape({-1}).contiguous().clone();
            TORCH_CHECK_VALUE(s.bias.numel() == s.weight.size(0), "the head's bias has ", s.bias.numel(),
                              " values for ", s.weight.size(0), " outputs");
        }
        layers_.push_back(std::move(s));
    }

    // The head for a float32 input of `src_dims` [N, C, H, W] laid out as `layout` ("nhwc" or
    // "blocked": ``to_tag``). Without a classifier the output is [N, C, 1, 1], or [N, C] where `flat`.
    std::unique_ptr<Head> prepare(const std::vector<int64_t> &src_dims, const std::string &layout, bool flat) {
        TORCH_CHECK_VALUE(src_dims.size() == 4 && src_dims[0] > 0 && src_dims[1] > 0 && src_dims[2] > 0 &&
                              src_dims[3] > 0,
                          "a head's input must be a non-empty [N, C, H, W]");
        const tag st = to_tag(layout);
        const int64_t n = src_dims[0], c = src_dims[1];
        TORCH_CHECK_VALUE(layers_.empty() || layers_[0].weight.size(1) == c, "the head's input has ", c,
                          " channels, its classifier weight expects ", layers_.empty() ? 0 : layers_[0].weight.size(1));
        auto &eng = cpu_engine();
        const memory::dims sd(src_dims.begin(), src_dims.end());
        auto pool_pd = [&](tag dst_tag) { return global_pool_pd(sd, dt::f32, st, dst_tag); };
        if (layers_.empty()) {  // [N, C, 1, 1] row-major: the same bytes as [N, C]
            std::vector<int64_t> out = flat ? std::vector<int64_t>{n, c} : std::vector<int64_t>{n, c, 1, 1};
            return std::make_unique<Head>(pool_pd(tag::nchw), std::vector<Dense>{}, out);
        }
        // the pooled values stay in the input's layout family (oneDNN's pooling wants one layout on
        // both sides) and the first inner product reads them so, its weight packed to match; each
        // later one reads the one before's [N, O]
        auto pool = pool_pd(st);
        std::vector<Dense> dense;
        memory::desc src = pool.dst_desc();
        for (auto &s : layers_) {
            const int64_t o = s.weight.size(0), k = s.weight.size(1);
            const bool first = dense.empty();
            memory::desc bias_md = s.bias.defined() ? memory::desc({o}, dt::f32, tag::x) : memory::desc();
            dnnl::primitive_attr ip_attr;
            ip_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
            dnnl::post_ops po;
            append_eltwise(po, s.activation, s.alpha, s.beta);
            ip_attr.set_post_ops(po);
            const memory::desc w_any = first ? memory::desc({o, k, 1, 1}, dt::f32, tag::any)
                                             : memory::desc({o, k}, dt::f32, tag::any);
            auto pd = dnnl::inner_product_forward::primitive_desc(eng, dnnl::prop_kind::forward_inference, src, w_any,
                                                                  bias_md, memory::desc({n, o}, dt::f32, tag::nc),
                                                                  ip_attr);
            const memory::desc w_user = first ? memory::desc({o, k, 1, 1}, dt::f32, tag::oihw)
                                              : memory::desc({o, k}, dt::f32, tag::oi);
            auto w = s.packed->get(pd.weights_desc(), memory(w_user, eng, s.weight.data_ptr()));
            memory bias = s.bias.defined() ? memory(bias_md, eng, s.bias.data_ptr()) : memory();
            src = pd.dst_desc();
            dnnl::inner_product_forward prim(pd);
            dense.push_back(Dense{std::move(pd), std::move(prim), w.first, w.second, std::move(bias)});
        }
        return std::make_unique<Head>(std::move(pool), std::move(dense),
                                      std::vector<int64_t>{n, layers_.back().weight.size(0)});
    }

    int64_t weight_copies() const {
        int64_t k = 0;
        for (const auto &s : layers_) k += s.packed->copies();
        return k;
    }
    void release_unused() {
        for (auto &s : layers_) s.packed->release_unused();
    }

   private:
    struct Spec {
        torch::Tensor weight, bias;
        std::string activation;
        double alpha, beta;
        std::unique_ptr<PackedWeights> packed;
    };
    std::vector<Spec> layers_;
};

// A chain of convolutions run in one call (one Python crossing for many layers): step i reads the
// output of step `src[i]` (-1: the chain's input x); with a binary-add residual (fp32 layers) it
// adds that of step `res[i]` (-1: x, -2: none; a `ChannelScale` multiplies by it instead, writing
// over its input where no later step reads that: a `GlobalPool` takes none); with `sum[i]` >= -1 (INT8 layers, whose sum
// post-op accumulates into the destination) its output starts as a copy of that step's output
// (-1: x), the bytes read as the output's type (u8 and s8 alike); -2: none. Its output is a
// channels-last tensor of `dtypes[i]` (0: f32, 1: u8, 2: s8, 3: bf16), on a buffer of the thread's
// `BufferPool` when it is large enough, released after step `last[i]` (its last reader in the
// chain). A float (f32 / bf16) step whose residual is an earlier step's output read last by it
// (and not its input) adds it in place instead (oneDNN's `sum` post-op into the residual's own
// buffer, which becomes the output: one read of it less); an INT8 step sums into such a
// residual's buffer itself instead of a copy of it. `EMBER_CHAIN_SUM=0` turns both off.
// Float steps made with `Layer.prepare(..., "blocked")` keep their outputs in oneDNN's blocked
// layout, on flat pooled buffers; a step that reads the chain's input (or adds it) in another
// layout than the input's reads a copy of it reordered once, and a blocked last output comes
// back channels-last. Returns the last step's output (channels-last), or with a `head` (made for
// the last step's output descriptor) the head's output. `times` (a float64 CPU tensor of n + 2
// values, for profiling): each step's milliseconds, then the head's pooling and classifier's (0
// without them).
// `run_chain`'s checks of a chain's description (raises ValueError naming the step at fault).
void check_chain(const std::vector<Step *> &convs, const std::vector<int64_t> &src, const std::vector<int64_t> &res,
                 const std::vector<int64_t> &sum, const std::vector<int64_t> &last, const std::vector<bool> &fused,
                 const std::vector<int64_t> &dtypes, const Head *head) {
    const size_t n = convs.size();
    TORCH_CHECK_VALUE(n > 0 && src.size() == n && res.size() == n && sum.size() == n && last.size() == n &&
                          fused.size() == n && dtypes.size() == n,
                      "a chain needs one src, res, sum, last, fused and dtype entry per convolution");
    for (size_t i = 0; i < n; ++i) {
        const auto before = static_cast<int64_t>(i);
        TORCH_CHECK_VALUE(src[i] >= -1 && src[i] < before && res[i] >= -2 && res[i] < before && sum[i] >= -2 &&
                              sum[i] < before && (res[i] != -2) == convs[i]->has_residual() &&
                              last[i] >= before && last[i] < static_cast<int64_t>(n) && dtypes[i] >= 0 &&
                              dtypes[i] <= 3,
                          "chain step ", i, ": its inputs must come from earlier steps");
    }
    TORCH_CHECK_VALUE(head == nullptr || head->src_desc() == convs[n - 1]->dst_desc(),
                      "the chain's head was made for another layout, type or shape than its last step's output");
}

// `run_chain` on a description `check_chain` accepted.
torch::Tensor execute_chain(const std::vector<Step *> &convs, const torch::Tensor &x, const std::vector<int64_t> &src,
                            const std::vector<int64_t> &res, const std::vector<int64_t> &sum,
                            const std::vector<int64_t> &last, const std::vector<bool> &fused,
                            const std::vector<int64_t> &dtypes, const Head *head,
                            const c10::optional<torch::Tensor> &times, const std::vector<bool> *trusted = nullptr) {
    const size_t n = convs.size();
    const auto &types = kChainTypes;
    double *ms = nullptr;
    if (times) {
        TORCH_CHECK_VALUE(times->device().is_cpu() && times->scalar_type() == at::kDouble && times->is_contiguous() &&
                              times->numel() == static_cast<int64_t>(n) + 2,
                          "times must be a contiguous float64 CPU tensor of ", n + 2, " values (one per step, then "
                          "the head's two)");
        ms = times->data_ptr<double>();
        std::fill(ms, ms + n + 2, 0.0);
    }
    at::internal::lazy_init_num_threads();
    std::vector<torch::Tensor> outs(n);
    const char *sum_env = std::getenv("EMBER_CHAIN_SUM");
    const bool in_place = sum_env == nullptr || std::string(sum_env) != "0";
    BufferPool &pool = BufferPool::local();
    std::vector<std::pair<memory::desc, torch::Tensor>> x_as;  // the chain's input in other layouts
    const bool plain_chain =
        std::all_of(convs.begin(), convs.end(), [](const Step *c) { return c->nhwc_src() && c->nhwc_dst(); });
    const memory::desc x_md = plain_chain ? memory::desc() : desc_of(x);
    // the chain's input as a step wants it (descriptor `md`): x, or a copy reordered once (a
    // oneDNN reorder converts layout and type alike)
    auto input_as = [&](const memory::desc &md) -> torch::Tensor {
        if (plain_chain || holds(x, md)) return x;
        for (auto &e : x_as)
            if (e.first == md) return e.second;
        torch::Tensor copy = pool.like(md, is_tag(md, tag::nhwc), to_scalar(md.get_data_type()));
        reorder_into(x.data_ptr(), x_md, copy.data_ptr(), md);
        x_as.emplace_back(md, copy);
        return copy;
    };
    pybind11::gil_scoped_release nogil;
    for (size_t i = 0; i < n; ++i) {
        const auto before = static_cast<int64_t>(i);
        const auto t0 = ms != nullptr ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
        const torch::Tensor in = src[i] < 0 ? input_as(convs[i]->src_desc()) : outs[src[i]];
        // an earlier step's output that no later step reads (nor this one as its input) may be
        // this step's output buffer
        auto free_after = [&](int64_t k) { return in_place && k >= 0 && k != src[i] && last[k] == int64_t(i); };
        // the second operand (a residual, a scale's factors), as the step reads it
        auto residual = [&]() -> c10::optional<torch::Tensor> {
            if (res[i] == -2) return c10::nullopt;
            return res[i] < 0 ? input_as(convs[i]->residual_md()) : outs[res[i]];
        };
        const bool float_out = dtypes[i] == 0 || dtypes[i] == 3;
        if (sum[i] == -2 && float_out && free_after(res[i]) && outs[res[i]].scalar_type() == types[dtypes[i]] &&
            convs[i]->has_summed() && fused[i] == convs[i]->has_fused()) {
            outs[i] = outs[res[i]];  // f32 / bf16: the residual added in place
            convs[i]->execute_summed(in, outs[i]);
        } else if (in_place && convs[i]->in_place() && src[i] >= 0 && last[src[i]] == before &&
                   in.scalar_type() == types[dtypes[i]]) {  // a scale over its input, read by no later step
            const auto r = residual();
            outs[i] = in;
            if (trusted == nullptr || !(*trusted)[i]) convs[i]->check(in, outs[i], r, fused[i]);
            convs[i]->execute(in, outs[i], r, fused[i]);
        } else {
            const auto r = residual();
            if (sum[i] != -2) {  // INT8, a scale with a residual: the output starts as the residual, summed into
                // the chain's input as the step lays out its output (a float step of a blocked chain
                // reads it reordered); 8-bit bytes are read as the output's type (u8 and s8 alike)
                const torch::Tensor acc = sum[i] >= 0 ? outs[sum[i]]
                                          : float_out && !holds(x, convs[i]->dst_desc()) ? input_as(convs[i]->dst_desc())
                                                                                         : x;
                TORCH_CHECK_VALUE(acc.element_size() == torch::elementSize(types[dtypes[i]]), "chain step ", i,
                                  ": the accumulator's type has another width than the output's");
                outs[i] = free_after(sum[i]) ? acc.view(types[dtypes[i]])
                                             : (acc.dim() == 4 ? acc.clone(c10::MemoryFormat::ChannelsLast)
                                                               : acc.clone())
                                                   .view(types[dtypes[i]]);
            } else {
                outs[i] = pool.like(convs[i]->dst_desc(), convs[i]->nhwc_dst(), types[dtypes[i]]);
            }
            if (trusted == nullptr || !(*trusted)[i]) convs[i]->check(in, outs[i], r, fused[i]);
            convs[i]->execute(in, outs[i], r, fused[i]);
        }
        for (size_t j = 0; j < i; ++j) {  // outputs read for the last time by this step
            if (last[j] != static_cast<int64_t>(i)) continue;
            pool.give(outs[j]);
            outs[j] = torch::Tensor();
        }
        if (ms != nullptr) ms[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    }
    for (auto &e : x_as) pool.give(e.second);
    if (head != nullptr) {  // the last output as it is laid out, pooled (and classified)
        torch::Tensor y = head->execute(outs[n - 1], ms != nullptr ? ms + n : nullptr);
        pool.give(outs[n - 1]);
        return y;
    }
    if (convs[n - 1]->nhwc_dst()) return outs[n - 1];
    const memory::desc last_md = convs[n - 1]->dst_desc();
    const auto dims = convs[n - 1]->dst_dims();
    auto y = torch::empty(dims, torch::TensorOptions().dtype(types[dtypes[n - 1]]).memory_format(c10::MemoryFormat::ChannelsLast));
    reorder_into(outs[n - 1].data_ptr(), last_md, y.data_ptr(),
                 memory::desc(memory::dims(dims.begin(), dims.end()), last_md.get_data_type(), tag::nhwc));
    pool.give(outs[n - 1]);
    return y;
}

torch::Tensor run_chain(const std::vector<Step *> &convs, const torch::Tensor &x, const std::vector<int64_t> &src,
                        const std::vector<int64_t> &res, const std::vector<int64_t> &sum,
                        const std::vector<int64_t> &last, const std::vector<bool> &fused,
                        const std::vector<int64_t> &dtypes, const Head *head,
                        const c10::optional<torch::Tensor> &times) {
    check_chain(convs, src, res, sum, last, fused, dtypes, head);
    return execute_chain(convs, x, src, res, sum, last, fused, dtypes, head, times);
}

// A chain's description checked and converted once (`run_chain`'s arguments but the input): each
// run then passes only its input, where `run_chain` converts seven Python lists a call (about 30 us
// for MobileNetV3-small's 70 steps, hot). Holds its steps and head alive (the Python binding keeps
// the lists they came in).
// `input_layout` and `quant` are the chain's input form (`chains._chain_input`), which `run_array`
// applies to the float32 NCHW array it is given ("nchw": as it is; "nhwc": made channels-last;
// `quant` (m, add, hi, to_int8): stored 8-bit channels-last by `quantize_nhwc`).
class ChainPlan {
   public:
    using Quant = std::tuple<double, double, double, bool>;

    ChainPlan(std::vector<Step *> convs, std::vector<int64_t> src, std::vector<int64_t> res, std::vector<int64_t> sum,
              std::vector<int64_t> last, std::vector<bool> fused, std::vector<int64_t> dtypes, const Head *head,
              const std::string &input_layout, c10::optional<Quant> quant)
        : convs_(std::move(convs)), src_(std::move(src)), res_(std::move(res)), sum_(std::move(sum)),
          last_(std::move(last)), fused_(std::move(fused)), dtypes_(std::move(dtypes)), head_(head),
          nchw_input_(input_layout == "nchw"), quant_(std::move(quant)) {
        TORCH_CHECK_VALUE(input_layout == "nchw" || input_layout == "nhwc",
                          "a chain's input layout is \"nchw\" or \"nhwc\", not \"", input_layout, "\"");
        check_chain(convs_, src_, res_, sum_, last_, fused_, dtypes_, head_);
        trusted_.resize(convs_.size());
        for (size_t i = 0; i < convs_.size(); ++i) trusted_[i] = wired(i);
    }

    torch::Tensor run(const torch::Tensor &x, const c10::optional<torch::Tensor> &times) const {
        return execute_chain(convs_, x, src_, res_, sum_, last_, fused_, dtypes_, head_, times, &trusted_);
    }

    // The chain on a numpy array, the array out (defined below `quantize_nhwc`), or None.
    pybind11::object run_array(const pybind11::array &a) const;

    // Whether step i's arguments fit it by construction, so a run need not check them (`Step::check`
    // cost about 1 us a step in a blocked chain, a tenth of a small layer): it reads only earlier
    // steps' outputs (not the chain's input, whose shape and layout come from the caller), each of
    // the descriptor it wants; its output is made for its own descriptor (a scale over its input:
    // the input's); and its fused flag is one it has.
    bool trusted(size_t i) const {
        TORCH_CHECK_VALUE(i < trusted_.size(), "the chain has ", trusted_.size(), " steps, not ", i + 1);
        return trusted_[i];
    }

   private:
    bool wired(size_t i) const {
        const Step *s = convs_[i];
        if (src_[i] < 0 || res_[i] == -1 || sum_[i] != -2) return false;  // the input, or a summed copy
        if (!(convs_[src_[i]]->dst_desc() == s->src_desc())) return false;
        if (res_[i] >= 0 && !(convs_[res_[i]]->dst_desc() == s->residual_md())) return false;
        if (fused_[i] && !s->has_fused()) return false;
        if (to_scalar(s->dst_desc().get_data_type()) != kChainTypes[dtypes_[i]]) return false;  // the output's type
        return !s->in_place() || s->dst_desc() == s->src_desc();
    }

    std::vector<bool> trusted_;
    std::vector<Step *> convs_;
    std::vector<int64_t> src_, res_, sum_, last_;
    std::vector<bool> fused_;
    std::vector<int64_t> dtypes_;
    const Head *head_;
    bool nchw_input_;
    c10::optional<Quant> quant_;
};

inline uint8_t quantize_one(float x, float m, float add, float hi) {
    float v = x * m;  // two roundings, as PyTorch's mul then add_ (no fused multiply-add)
    v = v + add;
    v = std::min(std::max(v, 0.0f), hi);
    return static_cast<uint8_t>(static_cast<int32_t>(v));
}

// x86-64 GCC builds this row function for AVX-512, AVX2 and the baseline and picks one at load
// (the extension is compiled without -march): 35 against 77 us for a 224x224 image on AVX-512.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define EMBER_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EMBER_CPU_CLONES
#endif

// One image row: each channel's W values (stride sw, channels sc apart) quantized into its plane
// of `planes` (C x W, vectorized), then interleaved into the channels-last row `o`.
EMBER_CPU_CLONES void quantize_row(const float *in, int64_t sw, int64_t sc, int64_t C, int64_t W, float m,
                                   float add, float hi, uint8_t flip, uint8_t *planes, uint8_t *o) {
    for (int64_t c = 0; c < C; ++c) {
        const float *row = in + c * sc;
        uint8_t *q = planes + c * W;
        if (sw == 1) {
            for (int64_t w = 0; w < W; ++w) q[w] = quantize_one(row[w], m, add, hi) ^ flip;
        } else {
            for (int64_t w = 0; w < W; ++w) q[w] = quantize_one(row[w * sw], m, add, hi) ^ flip;
        }
    }
    if (C == 3) {  // an RGB image: three planes into one row of pixels
        const uint8_t *a = planes, *b = planes + W, *d = planes + 2 * W;
        for (int64_t w = 0; w < W; ++w) {
            o[3 * w] = a[w];
            o[3 * w + 1] = b[w];
            o[3 * w + 2] = d[w];
        }
    } else {
        for (int64_t c = 0; c < C; ++c)
            for (int64_t w = 0; w < W; ++w) o[w * C + c] = planes[c * W + w];
    }
}

// 0 where x[0 .. n) are all finite, NaN otherwise: x * 0 is a signed zero for a finite x and NaN
// for NaN or an infinity; 16 independent sums, which the AVX-512 clone keeps in one register.
EMBER_CPU_CLONES float nonfinite_probe(const float *x, int64_t n) {
    float acc[16] = {0.f};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; ++k) acc[k] += x[i + k] * 0.0f;
    float s = 0.f;
    for (; i < n; ++i) s += x[i] * 0.0f;
    for (int k = 0; k < 16; ++k) s += acc[k];
    return s;
}

// Whether every element of a contiguous float32 CPU tensor is finite: one read of it, nothing
// allocated, no PyTorch operator (the finite-input check before each run of a program with fused
// epilogues; PyTorch's sum took 78 us for a 224x224 image right after a MobileNetV2 run evicted
// its code, this about a fifth). Large tensors are split across the threads.
bool finite_floats(const float *x, int64_t n) {
    constexpr int64_t kSerial = int64_t{1} << 20;
    if (n <= kSerial) return nonfinite_probe(x, n) == 0.f;
    std::atomic<bool> finite{true};
    pybind11::gil_scoped_release nogil;
    at::parallel_for(0, n, kSerial / 4, [&](int64_t begin, int64_t end) {
        if (finite.load(std::memory_order_relaxed) && nonfinite_probe(x + begin, end - begin) != 0.f)
            finite.store(false, std::memory_order_relaxed);
    });
    return finite.load();
}

bool all_finite(const torch::Tensor &t) {
    TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
                      "all_finite takes a contiguous float32 CPU tensor, got ", t.scalar_type(), " ", t.sizes());
    return finite_floats(t.data_ptr<float>(), t.numel());
}

// The float input of an INT8 chain stored 8-bit and channels-last in one pass, as ``qlayers.quantize``
// computes it (the same float32 operations, so the same bytes): v = x * m + add, clamped to
// [0, hi], truncated to u8 (the stored value shifted to be non-negative), then for s8 the top bit
// flipped. x: a 4-D float32 tensor of any strides (an NCHW image); finite values only (chains run
// only on finite inputs).
torch::Tensor quantize_nhwc(const torch::Tensor &x, double m, double add, double hi, bool to_int8) {
    TORCH_CHECK_VALUE(x.dim() == 4 && x.scalar_type() == torch::kFloat32, "quantize_nhwc takes a 4-D float32 tensor");
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
    auto out = torch::empty({N, C, H, W}, x.options().dtype(to_int8 ? torch::kInt8 : torch::kUInt8)
                                              .memory_format(c10::MemoryFormat::ChannelsLast));
    const float mf = static_cast<float>(m), af = static_cast<float>(add), hf = static_cast<float>(hi);
    const uint8_t flip = to_int8 ? 0x80 : 0;
    const float *src = x.data_ptr<float>();
    auto *dst = static_cast<uint8_t *>(out.data_ptr());
    pybind11::gil_scoped_release nogil;
    at::parallel_for(0, N * H, 16, [&](int64_t begin, int64_t end) {
        std::vector<uint8_t> planes(static_cast<size_t>(C * W));
        for (int64_t row = begin; row < end; ++row) {
            const int64_t n = row / H, h = row % H;
            quantize_row(src + n * sn + h * sh, sw, sc, C, W, mf, af, hf, flip, planes.data(), dst + row * W * C);
        }
    });
    return out;
}

// A one-chain program's whole run (`CPUExecutor.infer_direct`): a writeable, aligned, C-contiguous,
// native float32 numpy array whose values are all finite is read where it lies (no copy unless the
// chain's input form asks for one), the chain runs on it, and its output comes back as a numpy
// array that holds the output tensor (bfloat16 as float32, as `torch_to_numpy` gives it). Anything
// else returns None before running, for the generic path. It replaces `from_numpy`, a Python
// finite check and `.numpy()`: 0-3% on MobileNetV3-small and MobileNetV2 at batch 1 (twenty-second
// session), less than the 0.1 ms the twenty-first session estimated for them on swept caches.
pybind11::object ChainPlan::run_array(const pybind11::array &a) const {
    namespace py = pybind11;
    constexpr int kWanted = py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
    const py::dtype dt = a.dtype();
    const char order = dt.byteorder();
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    const bool native = order == '=' || order == '>';
#else
    const bool native = order == '=' || order == '<';
#endif
    if (dt.kind() != 'f' || dt.itemsize() != 4 || !native || (a.flags() & kWanted) != kWanted || !a.writeable())
        return py::none();
    const auto *data = static_cast<const float *>(a.data());
    if (!finite_floats(data, static_cast<int64_t>(a.size()))) return py::none();
    const std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
    torch::Tensor x = torch::from_blob(const_cast<float *>(data), shape, torch::TensorOptions().dtype(torch::kFloat32));
    if (quant_) {
        const auto &[m, add, hi, to_int8] = *quant_;
        x = quantize_nhwc(x, m, add, hi, to_int8);
    } else if (!nchw_input_ && !x.is_contiguous(c10::MemoryFormat::ChannelsLast)) {
        x = x.contiguous(c10::MemoryFormat::ChannelsLast);
    }
    torch::Tensor y = run(x, c10::nullopt);
    if (y.scalar_type() == torch::kBFloat16) y = y.to(torch::kFloat32);
    py::dtype out_type;
    switch (y.scalar_type()) {
        case torch::kFloat32: out_type = py::dtype::of<float>(); break;
        case torch::kUInt8: out_type = py::dtype::of<uint8_t>(); break;
        case torch::kInt8: out_type = py::dtype::of<int8_t>(); break;
        default: TORCH_CHECK_VALUE(false, "a chain's output of type ", y.scalar_type(), " has no numpy form here");
    }
    std::vector<py::ssize_t> dims, strides;
    for (int64_t d = 0; d < y.dim(); ++d) {
        dims.push_back(y.size(d));
        strides.push_back(y.stride(d) * static_cast<int64_t>(y.element_size()));
    }
    void *ptr = y.data_ptr();
    py::capsule owner(new torch::Tensor(std::move(y)), [](void *t) { delete static_cast<torch::Tensor *>(t); });
    return py::array(out_type, dims, strides, ptr, owner);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Persistent oneDNN convolution and INT8 matmul primitives (Ember's CPU tactic onednn_persistent)";
    m.def("version", &version, "libdnnl's version and CPU runtime, and the headers' it was compiled with");
    m.def("engine_ok", []() { cpu_engine(); return true; }, "creates oneDNN's CPU engine (raises if it cannot)");
    m.def("blocked_channels", []() { return to_tag("blocked") == tag::nChw16c ? 16 : 8; },
          "the channel block of the \"blocked\" layout on this CPU: 16 (nChw16c, AVX-512) or 8 (nChw8c)");
    m.def("run_chain", &run_chain, pybind11::arg("convs"), pybind11::arg("x"), pybind11::arg("src"),
          pybind11::arg("res"), pybind11::arg("sum"), pybind11::arg("last"), pybind11::arg("fused"),
          pybind11::arg("dtypes"), pybind11::arg("head") = nullptr, pybind11::arg("times") = pybind11::none(),
          "runs a chain of convolutions (and its head) in one call (see the source); returns the last output");
    pybind11::class_<ChainPlan>(m, "ChainPlan")
        .def(pybind11::init<std::vector<Step *>, std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>,
                            std::vector<int64_t>, std::vector<bool>, std::vector<int64_t>, const Head *,
                            const std::string &, c10::optional<ChainPlan::Quant>>(),
             pybind11::arg("convs"), pybind11::arg("src"), pybind11::arg("res"), pybind11::arg("sum"),
             pybind11::arg("last"), pybind11::arg("fused"), pybind11::arg("dtypes"),
             pybind11::arg("head") = nullptr, pybind11::arg("input_layout") = "nhwc",
             pybind11::arg("quant") = pybind11::none(), pybind11::keep_alive<1, 2>(),
             pybind11::keep_alive<1, 9>())  // the steps and the head live as long as the plan
        .def("run", &ChainPlan::run, pybind11::arg("x"), pybind11::arg("times") = pybind11::none(),
             "run_chain with this plan's steps on x")
        .def("run_array", &ChainPlan::run_array, pybind11::arg("x"),
             "the chain on a writeable, C-contiguous float32 numpy array of finite values, in its input form; "
             "its output as a numpy array, or None (before running) for any other input")
        .def("trusted", &ChainPlan::trusted, pybind11::arg("step"),
             "whether a run skips the step's argument checks (its arguments fit it by construction)");
    m.def("all_finite", &all_finite, pybind11::arg("x"),
          "whether every element of a contiguous float32 CPU tensor is finite (no NaN, no infinity)");
    m.def("quantize_nhwc", &quantize_nhwc, pybind11::arg("x"), pybind11::arg("m"), pybind11::arg("add"),
          pybind11::arg("hi"), pybind11::arg("to_int8"),
          "a finite float32 4-D tensor stored 8-bit channels-last as qlayers.quantize computes it");
    pybind11::class_<Step>(m, "Step")
        .def("run",
             [](const Step &st, const torch::Tensor &x, const torch::Tensor &out,
                const c10::optional<torch::Tensor> &residual, bool fused) {
                 st.check(x, out, residual, fused);
                 at::internal::lazy_init_num_threads();
                 pybind11::gil_scoped_release nogil;
                 st.execute(x, out, residual, fused);
             },
             pybind11::arg("x"), pybind11::arg("out"), pybind11::arg("residual") = pybind11::none(),
             pybind11::arg("fused") = false, "the step on x -> out alone (as a chain runs it)")
        .def_property_readonly("has_fused", &Step::has_fused)
        .def_property_readonly("dst_dims", &Step::dst_dims)
        .def_property_readonly("impl", &Step::impl)
        .def_property_readonly("blocked_output", [](const Step &c) { return !c.nhwc_dst(); });
    pybind11::class_<Conv, Step>(m, "Conv")
        .def("run", &Conv::run, pybind11::arg("x"), pybind11::arg("out"), pybind11::arg("residual") = pybind11::none(),
             pybind11::arg("fused") = false)
        .def_property_readonly("scratchpad_bytes", &Conv::scratchpad_bytes)
        .def_property_readonly("residual_bytes", &Conv::residual_bytes);
    pybind11::class_<GlobalPool, Step>(m, "GlobalPool",
                                       "global average pooling as a chain step: [N, C, H, W] -> [N, C, 1, 1]")
        .def(pybind11::init<std::vector<int64_t>, std::string, std::string, std::string>(), pybind11::arg("src_dims"),
             pybind11::arg("src_layout") = "nhwc", pybind11::arg("dst_layout") = "nhwc",
             pybind11::arg("dtype") = "f32");
    pybind11::class_<ChannelScale, Step>(m, "ChannelScale",
                                         "x [N, C, H, W] times s [N, C, 1, 1] as a chain step (s: the residual)")
        .def(pybind11::init<std::vector<int64_t>, std::string, std::string, bool, std::string, std::string>(),
             pybind11::arg("src_dims"), pybind11::arg("src_layout") = "nhwc", pybind11::arg("dst_layout") = "nhwc",
             pybind11::arg("sum") = false, pybind11::arg("activation") = "none", pybind11::arg("dtype") = "f32");
    pybind11::class_<Layer>(m, "Layer")
        .def(pybind11::init<torch::Tensor, c10::optional<torch::Tensor>, std::vector<int64_t>, std::vector<int64_t>,
                            int64_t, std::string, double, double, bool, std::string, std::string,
                            c10::optional<torch::Tensor>, double, int64_t, double, int64_t, std::string, double,
                            int64_t>(),
             pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("strides"), pybind11::arg("dilations"),
             pybind11::arg("groups"), pybind11::arg("activation") = "none", pybind11::arg("alpha") = 0.0,
             pybind11::arg("beta") = 0.0, pybind11::arg("residual") = false, pybind11::arg("src_dtype") = "f32",
             pybind11::arg("dst_dtype") = "f32", pybind11::arg("w_scales") = pybind11::none(),
             pybind11::arg("src_scale") = 1.0, pybind11::arg("src_zp") = 0, pybind11::arg("dst_scale") = 1.0,
             pybind11::arg("dst_zp") = 0, pybind11::arg("sum_dtype") = "", pybind11::arg("sum_scale") = 1.0,
             pybind11::arg("sum_zp") = 0)
        .def("prepare", &Layer::prepare, pybind11::arg("src_dims"), pybind11::arg("pad_l"), pybind11::arg("pad_r"),
             pybind11::arg("src_layout") = "nhwc", pybind11::arg("dst_layout") = "nhwc",
             pybind11::keep_alive<0, 1>())  // a Conv reads its Layer's packed weight and bias
        .def("prepare_dw", &Layer::prepare_dw, pybind11::arg("dw"), pybind11::arg("src_dims"), pybind11::arg("pads"),
             pybind11::arg("dw_pads"), pybind11::arg("src_layout") = "nhwc", pybind11::arg("dst_layout") = "nhwc",
             pybind11::arg("reference_ok") = false, pybind11::keep_alive<0, 1>(),
             pybind11::keep_alive<0, 2>())  // the pair reads both layers' weights and biases
        .def_property_readonly("weight_copies", &Layer::weight_copies)
        .def("release_unused", &Layer::release_unused,
             "drops the weight copies in layouts no live primitive of the layer uses");
    pybind11::class_<Head>(m, "Head")
        .def("run", &Head::run, pybind11::arg("x"))
        .def_property_readonly("dst_dims", &Head::dst_dims)
        .def_property_readonly("has_classifier", &Head::has_classifier)
        .def_property_readonly("dense_layers", &Head::dense_layers)
        .def_property_readonly("impl", &Head::impl);
    pybind11::class_<HeadLayer>(m, "HeadLayer")
        .def(pybind11::init<c10::optional<torch::Tensor>, c10::optional<torch::Tensor>, std::string, double, double>(),
             pybind11::arg("weight") = pybind11::none(), pybind11::arg("bias") = pybind11::none(),
             pybind11::arg("activation") = "none", pybind11::arg("alpha") = 0.0, pybind11::arg("beta") = 0.0)
        .def("then", &HeadLayer::then, pybind11::arg("weight"), pybind11::arg("bias") = pybind11::none(),
             pybind11::arg("activation") = "none", pybind11::arg("alpha") = 0.0, pybind11::arg("beta") = 0.0,
             "appends a dense layer reading the previous one's output")
        .def("prepare", &HeadLayer::prepare, pybind11::arg("src_dims"), pybind11::arg("layout") = "nhwc",
             pybind11::arg("flat") = false,
             pybind11::keep_alive<0, 1>())  // a Head reads its HeadLayer's packed weight and bias
        .def_property_readonly("weight_copies", &HeadLayer::weight_copies)
        .def("release_unused", &HeadLayer::release_unused,
             "drops the weight copies in layouts no live head of the layer uses");
    pybind11::class_<Lrn>(m, "Lrn")
        .def(pybind11::init<std::vector<int64_t>, int64_t, double, double, double, std::string>(),
             pybind11::arg("dims"), pybind11::arg("size"), pybind11::arg("alpha"), pybind11::arg("beta"),
             pybind11::arg("k"), pybind11::arg("dtype") = "f32")
        .def("run", &Lrn::run, pybind11::arg("x"), pybind11::arg("out"))
        .def_property_readonly("impl", &Lrn::impl);
    pybind11::class_<MaxPool>(m, "MaxPool")
        .def(pybind11::init<std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>,
                            std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>, std::string>(),
             pybind11::arg("src"), pybind11::arg("dst"), pybind11::arg("kernel"), pybind11::arg("strides"),
             pybind11::arg("dilations"), pybind11::arg("pad_l"), pybind11::arg("pad_r"), pybind11::arg("dtype") = "f32")
        .def("run", &MaxPool::run, pybind11::arg("x"), pybind11::arg("out"))
        .def_property_readonly("impl", &MaxPool::impl);
    pybind11::class_<Matmul>(m, "Matmul")
        .def("run", &Matmul::run, pybind11::arg("x"), pybind11::arg("out"))
        .def_property_readonly("dst_dims", &Matmul::dst_dims)
        .def_property_readonly("impl", &Matmul::impl)
        .def_property_readonly("scratchpad_bytes", &Matmul::scratchpad_bytes);
    pybind11::class_<Linear>(m, "Linear")
        .def(pybind11::init<torch::Tensor, c10::optional<torch::Tensor>, torch::Tensor, std::string, double, double,
                            std::string, double, int64_t, std::string, double, int64_t>(),
             pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("w_scales"),
             pybind11::arg("activation") = "none", pybind11::arg("alpha") = 0.0, pybind11::arg("beta") = 0.0,
             pybind11::arg("src_dtype") = "u8", pybind11::arg("src_scale") = 1.0, pybind11::arg("src_zp") = 0,
             pybind11::arg("dst_dtype") = "f32", pybind11::arg("dst_scale") = 1.0, pybind11::arg("dst_zp") = 0)
        .def("prepare", &Linear::prepare, pybind11::arg("m"),
             pybind11::keep_alive<0, 1>())  // a Matmul reads its Linear's packed weight, bias and scales
        .def_property_readonly("weight_copies", &Linear::weight_copies);
}
