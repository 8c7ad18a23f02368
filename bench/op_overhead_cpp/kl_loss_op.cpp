// Option (a) of issue 23's overhead decision, built only to measure it (bench/op_overhead.py
// --cpp compiles it with torch.utils.cpp_extension): an operator klgrad_cpp::kl_loss
// registered from C++ with TORCH_LIBRARY, its CPU kernel calling klgrad::evaluate and its
// autograd kernel a torch::autograd::Function, so that no Python runs between the
// dispatcher and the kernel. A prototype: float32 2-D contiguous logp and ref of one shape,
// no mask, no behaviour; not part of the package (built against one torch's C++ headers,
// it loads only into that torch).
#include <klgrad/klgrad.hpp>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <map>
#include <string>
#include <tuple>

namespace {

using rows = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

/// The spec of a spec string, parsed once per distinct string (as klgrad._ops does).
const klgrad::spec& parsed(const std::string& text) {
  static thread_local std::map<std::string, klgrad::spec> seen;
  auto it = seen.find(text);
  if (it == seen.end()) it = seen.emplace(text, klgrad::parse_spec(text)).first;
  return it->second;
}

/// (loss, value, coef): one klgrad::evaluate into new value and coef tensors.
outputs kl_loss_cpu(const at::Tensor& logp, const at::Tensor& ref, c10::string_view spec) {
  TORCH_CHECK(logp.dim() == 2 && logp.scalar_type() == at::kFloat && logp.is_contiguous() &&
                  ref.sizes() == logp.sizes() && ref.scalar_type() == at::kFloat &&
                  ref.is_contiguous(),
              "klgrad_cpp::kl_loss (a prototype) takes float32 2-D contiguous logp and ref "
              "of one shape");
  at::Tensor value = at::empty_like(logp), coef = at::empty_like(logp);
  const auto b = logp.size(0), t = logp.size(1);
  const Eigen::Map<const rows> lp(logp.data_ptr<float>(), b, t), lr(ref.data_ptr<float>(), b, t);
  Eigen::Map<rows> v(value.data_ptr<float>(), b, t), c(coef.data_ptr<float>(), b, t);
  const auto s = klgrad::evaluate(parsed(std::string(spec)), klgrad::padded(lp, lr), v, c);
  return {at::scalar_tensor(s.loss, logp.options()), value, coef};
}

/// d loss / d logp = grad_loss * coef; nothing flows into ref.
struct kl_loss_function : torch::autograd::Function<kl_loss_function> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& logp, const at::Tensor& ref,
                                                c10::string_view spec) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("klgrad_cpp::kl_loss", "")
                               .typed<outputs(const at::Tensor&, const at::Tensor&,
                                              c10::string_view)>();
    auto [loss, value, coef] = op.call(logp, ref, spec);
    ctx->save_for_backward({coef});
    ctx->mark_non_differentiable({value, coef});
    return {loss, value, coef};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor coef = ctx->get_saved_variables()[0];
    return {grads[0] * coef, at::Tensor(), at::Tensor()};
  }
};

outputs kl_loss_autograd(const at::Tensor& logp, const at::Tensor& ref, c10::string_view spec) {
  const auto out = kl_loss_function::apply(logp, ref, spec);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY(klgrad_cpp, m) {
  m.def("kl_loss(Tensor logp, Tensor ref, str spec) -> (Tensor, Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(klgrad_cpp, CPU, m) { m.impl("kl_loss", kl_loss_cpu); }
TORCH_LIBRARY_IMPL(klgrad_cpp, Autograd, m) { m.impl("kl_loss", kl_loss_autograd); }
