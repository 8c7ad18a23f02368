// libFuzzer target: klgrad eval's log-prob JSON input (logp, ref, behavior, mask, offsets),
// parsed and evaluated by the code the CLI runs, under a few specs and both precisions.
// Refusals (usage_error, klgrad::error) are expected; any other exception or a sanitizer
// report is a finding.
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
  if (doc.is_object() && doc.contains("logits")) return 0;  // fuzz_logits_json's input
  eval_input::settings runs[3];
  runs[0].spec = "k3-as-loss";
  runs[1].spec = "k2-as-loss,is=detached,is-clip=2,agg=seq-mean-token-mean";
  runs[1].type = "float";
  runs[2].spec = "k1-in-reward,agg=token-sum,clamp=log-ratio:-20:20";
  runs[2].nonfinite = "propagate";
  runs[2].tokens = 64;
  // Outside the try: a spec that does not parse would test nothing, and fails here at once.
  for (const auto& cfg : runs) (void)klgrad::parse_spec(cfg.spec);
  for (const auto& cfg : runs) {
    try {
      (void)eval_input::evaluate_input(doc, cfg).dump();
    } catch (const usage_error&) {
    } catch (const klgrad::error&) {
    }
  }
  return 0;
}
