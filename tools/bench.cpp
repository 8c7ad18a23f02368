// klgrad bench: the throughput of sampled-token specs or full-vocabulary divergences on a
// synthetic batch of the user's shape, on this machine, beside this machine's floor measured
// in the same rounds (klgrad/bench.hpp; docs/performance.md says how to read it).
#include "allocations.hpp"
#include "commands.hpp"

#include <klgrad_frontend/bench_json.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <new>
#include <string>
#include <vector>

namespace klgrad::cli {
namespace {

namespace bj = frontend::bench_json;
using frontend::settings_error;

struct bench_options {
  std::vector<std::string> specs, divergences;
  std::string shape, dtype = "float", format = "table";
  long long tokens = 0, vocabulary = 0;
  bool tokens_given = false;
  std::vector<long long> lengths;
  int threads = 1;
  double seconds = 1.0;
};

/// "64x8192" -> B = 64, T = 64; anything else refused in the option's words.
void read_shape(const std::string& text, bench::batch_shape& b) {
  const auto refuse = [&] {
    return settings_error("--shape must be BxT with whole numbers B, T > 0 (e.g. 64x8192), got '" +
                          text + "'");
  };
  const auto x = text.find('x');
  if (x == std::string::npos || x == 0 || x + 1 == text.size()) throw refuse();
  const std::string digits = "0123456789";
  const std::string bs = text.substr(0, x), ts = text.substr(x + 1);
  if (bs.find_first_not_of(digits) != std::string::npos ||
      ts.find_first_not_of(digits) != std::string::npos || bs.size() > 12 || ts.size() > 12)
    throw refuse();
  b.sequences = std::stoll(bs);
  b.positions = std::stoll(ts);
  if (b.sequences <= 0 || b.positions <= 0) throw refuse();
}

/// The batch the options describe, every combination that means nothing refused.
bench::batch_shape batch_of(const bench_options& o) {
  bench::batch_shape b;
  if (o.specs.empty() && o.divergences.empty())
    throw settings_error("nothing to measure: give --spec S or --logits DIVERGENCE (each may "
                         "be repeated)");
  if (!o.shape.empty() && o.tokens_given)
    throw settings_error("--shape (a padded batch) and --tokens (a packed one) exclude each other");
  if (o.shape.empty() && !o.tokens_given)
    throw settings_error("no batch: give --shape BxT (padded) or --tokens N (packed, with "
                         "--lengths)");
  if (!o.lengths.empty() && !o.tokens_given)
    throw settings_error("--lengths describes a packed batch: give --tokens N with it");
  if (!o.shape.empty()) read_shape(o.shape, b);
  if (o.tokens_given && o.tokens <= 0)
    throw settings_error("--tokens must be > 0, got " + std::to_string(o.tokens));
  b.tokens = o.tokens;
  for (long long length : o.lengths) {
    if (length <= 0)
      throw settings_error("--lengths must be > 0 each, got " + std::to_string(length));
    b.lengths.push_back(length);
  }
  if (!o.divergences.empty() && o.vocabulary <= 0)
    throw settings_error("--logits needs --vocab V > 0 (the logits per row), got " +
                         std::to_string(o.vocabulary));
  if (o.divergences.empty() && o.vocabulary != 0)
    throw settings_error("--vocab applies to --logits only");
  b.vocabulary = o.vocabulary;
  return b;
}

/// The settings, with the program's allocation count and, on a terminal, a progress line.
bench::settings settings_of(const bench_options& o) {
  if (!(o.seconds > 0) || !std::isfinite(o.seconds))
    throw settings_error("--seconds must be a time budget > 0 per kernel, got " +
                         std::to_string(o.seconds));
  if (o.threads < 1) throw settings_error("--threads must be >= 1, got " + std::to_string(o.threads));
  bench::settings how;
  how.seconds = o.seconds;
  how.threads = o.threads;
  if (counts_allocations()) how.allocations = heap_allocations;
  return how;
}

/// The formats a row may have: 16-bit for logits only.
bench::number_format format_of(const bench_options& o) {
  const bench::number_format f = *bj::format_named(o.dtype);
  const bool sixteen = f == bench::number_format::bfloat16 || f == bench::number_format::float16;
  if (sixteen && !o.specs.empty())
    throw settings_error("--dtype " + o.dtype + " applies to --logits only; sampled tokens "
                         "(--spec) are float or double");
  return f;
}

/// A progress line on stderr, redrawn at most ten times a second.
class progress_line {
 public:
  explicit progress_line(std::size_t total) : total_(total), on_(isatty(STDERR_FILENO) != 0) {}
  void at(std::size_t row, const std::string& name, double fraction) {
    if (!on_) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::milliseconds(100) && fraction < 1) return;
    last_ = now;
    std::fprintf(stderr, "\rklgrad bench: %zu/%zu %s %3.0f%%\033[K", row + 1, total_,
                 name.c_str(), 100 * fraction);
    std::fflush(stderr);
  }
  ~progress_line() {
    if (on_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  std::size_t total_;
  bool on_;
  std::chrono::steady_clock::time_point last_{};
};

/// "1.2 GB": a memory size for the out-of-memory refusal.
std::string gigabytes(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GB", bytes / 1e9);
  return text;
}

/// The bytes a row allocates (its inputs, outputs and floor), roughly.
double bytes_needed(bj::kind k, const bench::batch_shape& b, bench::number_format f) {
  const double element = f == bench::number_format::float64 ? 8 : 4;
  const double items = double(b.size());
  return k == bj::kind::spec ? items * (5 * element + 1) * 2
                             : items * double(b.vocabulary) * 3 * element;
}

/// One row, its memory refusal in the options' words.
bench::result measure(bj::kind k, const std::string& name, const bench::batch_shape& b,
                      bench::number_format f, const bench::settings& how) {
  try {
    return bj::measure(k, name, "--logits '" + name + "': ", b, f, how);
  } catch (const std::bad_alloc&) {
    throw settings_error("out of memory: " + name + " on this batch needs about " +
                         gigabytes(bytes_needed(k, b, f)) + "; choose a smaller --shape, "
                         "--tokens or --vocab");
  }
}

/// "64 x 8192 padded tokens (90% valid), V = 151936": the batch in the table's title.
std::string batch_text(const bench::batch_shape& b, bool specs) {
  std::string out = b.packed() ? std::to_string(b.tokens) + " packed tokens"
                               : std::to_string(b.sequences) + " x " +
                                     std::to_string(b.positions) + " padded tokens";
  if (specs && !b.packed()) out += " (90% valid)";
  if (b.vocabulary > 0) out += ", V = " + std::to_string(b.vocabulary) + " logits per row";
  return out;
}

/// "158.9 M": a rate with an SI prefix, four significant digits at most.
std::string si(double x) {
  const char* prefixes[] = {"", "k", "M", "G", "T"};
  int p = 0;
  while (x >= 1000 && p < 4) {
    x /= 1000;
    ++p;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%.4g", x);
  return p > 0 ? std::string(text) + " " + prefixes[p] : std::string(text);
}

/// "0" for a whole number of allocations per call, "n/a" when not counted.
std::string allocations_text(const nlohmann::json& a) {
  if (a.is_null()) return "n/a";
  char text[32];
  const double x = a.get<double>();
  std::snprintf(text, sizeof text, x == std::floor(x) ? "%.0f" : "%.2f", x);
  return text;
}

/// The header: the batch, the format, the vectors the kernels ran on, threads and budget;
/// then, where this CPU offers wider vectors than the build uses, a line saying so.
void print_header(const nlohmann::json& out) {
  const nlohmann::json& first = out["rows"].at(0);
  const auto compiled = first["vector_isa"].get<std::string>();
  const auto cpu = first["cpu_vector_isa"].get<std::string>();
  std::printf("klgrad bench: %s, %s, %s vectors, %d thread(s), %.3g s per kernel; the floor "
              "timed in the same rounds\n", out["batch"].get<std::string>().c_str(),
              out["dtype"].get<std::string>().c_str(), compiled.c_str(),
              out["threads"].get<int>(), out["seconds"].get<double>());
  if (cpu != compiled && cpu != "unknown")
    std::printf("note: this CPU offers %s vectors, which a build with -march=native uses "
                "(docs/performance.md)\n", cpu.c_str());
}

void print_table(const nlohmann::json& out) {
  print_header(out);
  auto label = [](const nlohmann::json& r) {
    return r["kernel"].get<std::string>() + " (" + r["unit"].get<std::string>() + ")";
  };
  int width = 32;
  for (const auto& r : out["rows"]) width = std::max(width, int(label(r).size()));
  std::printf("%-*s %10s %22s %7s  %-7s %7s %8s %14s %7s %6s\n", width, "kernel (unit)",
              "per second", "[q1, q3]", "GB/s", "floor", "GB/s", "of floor", "[q1, q3]", "allocs",
              "rounds");
  for (const auto& r : out["rows"]) {
    const auto& rate = r["items_per_second"];
    const auto& ratio = r["of_floor"];
    const double gb = rate["median"].get<double>() * r["bytes_per_item"].get<double>() / 1e9;
    const double floor_gb = r["floor_items_per_second"]["median"].get<double>() *
                            r["floor_bytes_per_item"].get<double>() / 1e9;
    const std::string interval = "[" + si(rate["q1"]) + ", " + si(rate["q3"]) + "]";
    char ratios[32];
    std::snprintf(ratios, sizeof ratios, "[%.2f, %.2f]", ratio["q1"].get<double>(),
                  ratio["q3"].get<double>());
    std::printf("%-*s %10s %22s %7.2f  %-7s %7.2f %8.2f %14s %7s %6lld\n", width,
                label(r).c_str(),
                si(rate["median"]).c_str(), interval.c_str(), gb,
                r["floor"].get<std::string>().c_str(), floor_gb, ratio["median"].get<double>(),
                ratios, allocations_text(r["allocations_per_call"]).c_str(),
                r["rounds"].get<long long>());
  }
  std::printf("of floor: floor time / kernel time in each round (median, quartiles); 1 = as fast "
              "as this machine's floor:\n  triad over the same bytes (sampled tokens), "
              "exp-sum of the same logits (rows); docs/performance.md\n");
}

/// Each kernel measured in turn, a row of JSON each; the progress line, if any, is cleared
/// when they are done.
nlohmann::json measure_rows(const bench_options& o, const bench::batch_shape& b,
                            bench::number_format f, const bench::settings& base) {
  std::vector<std::pair<bj::kind, std::string>> kernels;
  for (const std::string& s : o.specs) kernels.emplace_back(bj::kind::spec, s);
  for (const std::string& d : o.divergences) kernels.emplace_back(bj::kind::logits, d);
  nlohmann::json rows = nlohmann::json::array();
  progress_line progress(kernels.size());
  for (std::size_t i = 0; i < kernels.size(); ++i) {
    const bj::kind k = kernels[i].first;
    const std::string& name = kernels[i].second;
    bench::settings how = base;
    how.progress = [&, i](double fraction) { progress.at(i, name, fraction); };
    rows.push_back(bj::result_json(k, measure(k, name, b, f, how)));
  }
  return rows;
}

void run_bench(const bench_options& o) {
  const bench::batch_shape b = batch_of(o);
  const bench::settings how = settings_of(o);
  const bench::number_format f = format_of(o);
  const nlohmann::json out = {{"command", "bench"}, {"batch", batch_text(b, !o.specs.empty())},
                              {"dtype", o.dtype}, {"threads", o.threads}, {"seconds", o.seconds},
                              {"allocations_counted", counts_allocations()},
                              {"rows", measure_rows(o, b, f, how)}};
  if (o.format == "json") std::cout << out.dump() << "\n";
  else print_table(out);
}

}  // namespace

void add_bench(CLI::App& app) {
  auto o = std::make_shared<bench_options>();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Measure the throughput of specs (sampled tokens) or divergences (full logits) on a "
      "synthetic batch of your shape, on this machine: tokens (rows) per second with "
      "quartiles, heap allocations per call, and the ratio to this machine's floor (the triad "
      "over the same bytes; the exp-sum of the same logits) timed in the same rounds.");
  cmd->add_option("--spec", o->specs, "a spec to measure, e.g. k3-as-loss or as-loss,preset=verl,kl=low_var_kl "
                                      "(repeatable)");
  cmd->add_option("--logits", o->divergences,
                  "a divergence over full logits to measure, value and gradient: " +
                      bj::divergence_list() + " (repeatable; needs --vocab)");
  cmd->add_option("--shape", o->shape, "padded batch BxT (e.g. 64x8192), 90% of tokens valid");
  const CLI::Option* tokens = cmd->add_option("--tokens", o->tokens,
                                              "packed batch of N tokens (no padding)");
  cmd->add_option("--lengths", o->lengths,
                  "sequence lengths of the packed batch, cycled (e.g. 512,2048); default one "
                  "sequence of N")
      ->delimiter(',');
  cmd->add_option("--vocab", o->vocabulary, "logits per row, for --logits");
  cmd->add_option("--dtype", o->dtype, "float or double; for --logits also bf16 or fp16")
      ->check(CLI::IsMember({"float", "double", "bf16", "fp16"}));
  cmd->add_option("--threads", o->threads,
                  "threads sharing each call, each over its own slice of the batch (whole sequences; rows "
                  "for --logits)");
  cmd->add_option("--seconds", o->seconds, "time budget per kernel (default 1)");
  cmd->add_option("--format", o->format, "table (default) or json")
      ->check(CLI::IsMember({"table", "json"}));
  cmd->callback([o, tokens] {
    o->tokens_given = tokens->count() > 0;
    run_bench(*o);
  });
}

}  // namespace klgrad::cli
