// libFuzzer target: klgrad audit's policy file (vocab, steps, logits, ref_logits,
// behavior_logits), parsed and audited by the code the CLI runs, sampling from pi and from
// mu, with a small Monte Carlo run and a 4 MiB memory limit (which also bounds the time of
// an iteration). Refusals (usage_error, klgrad::error) are expected; any other exception or
// a sanitizer report is a finding.
#include <klgrad_frontend/audit_json.hpp>
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
  audit_input::settings runs[2];
  runs[0].spec = "k3-as-loss";
  runs[1].spec = "k2-as-loss,is=detached";
  runs[1].sampling = "behavior";
  runs[1].mc = 8;
  for (auto& cfg : runs) {
    cfg.max_memory = 4u << 20;
    try {
      (void)audit_input::audit(klgrad::parse_spec(cfg.spec), doc, cfg).dump();
    } catch (const usage_error&) {
    } catch (const klgrad::error&) {
    }
  }
  return 0;
}
