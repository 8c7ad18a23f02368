// libFuzzer target: klgrad eval's logits JSON input (logits, ref_logits, mask, ids, coef,
// divergence and its settings), parsed and evaluated by the code the CLI runs, in both
// precisions. Refusals (usage_error, klgrad::error) are expected; any other exception or a
// sanitizer report is a finding.
#include <klgrad_frontend/eval_json.hpp>
#include <klgrad_frontend/json_input.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace klgrad::frontend;
  const std::string text(reinterpret_cast<const char*>(data), size);
  nlohmann::json doc;
  try {
    parse_json(text, "fuzz", doc);
  } catch (const usage_error&) {
    return 0;
  }
  if (!doc.is_object() || !doc.contains("logits")) return 0;  // fuzz_eval_json's input
  eval_input::settings runs[2];
  runs[1].spec = "agg=seq-mean-token-mean,beta=0.5";
  runs[1].type = "float";
  runs[1].sequences = 8;
  for (const auto& cfg : runs) {
    try {
      (void)eval_input::evaluate_input(doc, cfg).dump();
    } catch (const usage_error&) {
    } catch (const klgrad::error&) {
    }
  }
  return 0;
}
