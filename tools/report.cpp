// klgrad report: the audit table (which divergence each canonical spec follows, on- and
// off-policy) and the training table (where a toy KL-regularised trainer using each spec
// ends, measured exactly against the analytic optimum pi*), with CSV curves and plots.
#include "commands.hpp"
#include "json_file.hpp"
#include "report.hpp"

#include <klgrad_frontend/errors.hpp>
#include <klgrad_frontend/policy_file.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <memory>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace klgrad::cli {
namespace {

using frontend::positive_integer;
using frontend::read_logits;
using report::Index;
using report::matrix;
using report::tabular;
using report::vector;

struct options_ {
  report::settings cfg;
  std::string out, format = "table";
};


/// The user's problem from the audit's policy format: ref_logits is the reference, logits
/// the policy that is audited and that training starts from, behavior_logits (optional) mu;
/// an optional "reward" list gives R(y) for the V^T sequences in lexicographic order
/// (default: U(0, 1) drawn from --seed).
report::case_ user_case(const report::settings& cfg) {
  const nlohmann::json& in = read_json(cfg.policy_file);
  if (!in.is_object()) throw frontend::schema_error("the policy file must hold a JSON object");
  const Index v = positive_integer(in, "vocab", 2), t = positive_integer(in, "steps", 1);
  if (double(t) * std::log(double(v)) > std::log(65536.0))
    throw frontend::limit_error("vocab^steps exceeds 65536 sequences; the report enumerates "
                                "every one at every recorded step");
  report::case_ c;
  c.problem.name = "policy";
  c.problem.ref = read_logits(in, "ref_logits", v, t);
  c.problem.start = read_logits(in, "logits", v, t);
  c.problem.beta = cfg.beta;
  const Index n = tabular::power(v, t);
  c.problem.reward.resize(n);
  if (in.contains("reward")) {
    const auto& r = in["reward"];
    if (!r.is_array() || Index(r.size()) != n)
      throw frontend::schema_error("'reward' must list " + std::to_string(n) + " numbers (V^T)");
    for (Index i = 0; i < n; ++i) {
      if (!r[std::size_t(i)].is_number() || !std::isfinite(r[std::size_t(i)].get<double>()))
        throw frontend::schema_error("reward[" + std::to_string(i) + "] must be a finite number");
      c.problem.reward(i) = r[std::size_t(i)].get<double>();
    }
  } else {
    std::mt19937_64 rng(cfg.seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (Index i = 0; i < n; ++i) c.problem.reward(i) = u(rng);
  }
  c.audit_pi = c.problem.start;
  if (in.contains("behavior_logits")) {
    c.audit_mu = read_logits(in, "behavior_logits", v, t);
    c.audit_at = "pi = logits, mu = behavior_logits";
  } else {
    c.audit_mu = report::perturbed(c.audit_pi, cfg.behavior_noise, cfg.seed + 1000);
    c.audit_at = "pi = logits, mu = logits + N(0, " +
                 klgrad::detail::format_number(cfg.behavior_noise) + "^2)";
  }
  return c;
}

std::string sci(double x, int digits = 1) {
  std::ostringstream s;
  s << std::scientific << std::setprecision(digits) << x;
  return s.str();
}
std::string fix(double x, int digits = 3) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << x;
  return s.str();
}

std::size_t spec_width(const nlohmann::ordered_json& r) {
  std::size_t w = 4;
  for (const auto& s : r["specs"]) w = std::max(w, s.get<std::string>().size());
  return w + 2;
}

void print_tables(const nlohmann::ordered_json& r) {
  const std::size_t W = spec_width(r);
  const auto& st = r["settings"];
  for (const auto& P : r["problems"]) {
    const std::string name = P["name"];
    std::cout << "== problem " << name << ": V = " << P["vocab"].get<long long>()
              << ", T = " << P["steps"].get<long long>() << ", beta = "
              << P["beta"].get<double>() << "; optimum pi*: E[R] = "
              << fix(P["optimum"]["reward"]) << ", KL = " << fix(P["optimum"]["kl"])
              << ", J* = beta log Z = " << fix(P["optimum"]["objective"], 4) << "\n\n";
    std::cout << "(a) audit: exact expected gradient of each spec (agg=token-sum, beta=1) at "
              << P["audit"]["at"].get<std::string>()
              << ";\n    'follows' = a target within 1e-9 relative error, else none and the "
                 "nearest target with its relative error\n";
    std::cout << std::left << std::setw(int(W)) << "spec" << std::setw(14) << "on-policy"
              << std::setw(14) << "nearest" << std::setw(10) << "rel.err" << std::setw(14)
              << "off-policy" << std::setw(14) << "nearest" << "rel.err\n";
    for (const auto& row : P["audit"]["rows"]) {
      std::cout << std::left << std::setw(int(W)) << row["spec"].get<std::string>();
      for (const char* m : {"on_policy", "off_policy"}) {
        const auto& a = row[m];
        std::cout << std::setw(14) << a["follows"].get<std::string>() << std::setw(14)
                  << a["nearest"].get<std::string>() << std::setw(m[1] == 'n' ? 10 : 0)
                  << sci(a["nearest_error"]);
      }
      std::cout << "\n";
    }
    const auto& on = P["training"]["on-policy"];
    const auto& off = P["training"]["off-policy"];
    std::cout << "\n(b) training: " << st["steps"].get<long long>() << " batches of "
              << st["batch"].get<long long>() << " sequences, SGD lr "
              << st["learning_rate"].get<double>() << ", seed " << st["seed"].get<long long>()
              << "; on-policy 1 update per batch, off-policy " << off["updates_per_batch"].get<long long>()
              << " updates per batch (behaviour log-probs from the sampling policy).\n"
              << "    Start: TV " << fix(P["start"]["tv"]) << ", KL " << fix(P["start"]["kl"])
              << ", E[R] " << fix(P["start"]["reward"]) << ". Final = mean over the last "
              << int(std::lround(100 * st["window"].get<double>())) << "% of steps (exact).\n"
              << "    Noise floor (" << st["noise_floor_spec"].get<std::string>()
              << " started at pi*): TV " << fix(on["noise_floor"]) << " on / "
              << fix(off["noise_floor"]) << " off; verdict pi* if TV <= "
              << st["tolerance_factor"].get<double>() << " x floor = " << fix(on["tolerance"])
              << " / " << fix(off["tolerance"]) << "\n";
    std::cout << std::left << std::setw(int(W)) << "spec" << "| on-policy: TV   KL     E[R]   verdict    "
              << "| off-policy: TV  KL     E[R]   verdict\n";
    for (std::size_t i = 0; i < on["runs"].size(); ++i) {
      std::cout << std::left << std::setw(int(W)) << on["runs"][i]["spec"].get<std::string>();
      for (const auto* M : {&on, &off}) {
        const auto& run = (*M)["runs"][i];
        const auto& f = run["final"];
        std::cout << "| " << std::setw(11) << " " << std::setw(7) << fix(f["tv"])
                  << std::setw(7) << fix(f["kl"]) << std::setw(7) << fix(f["reward"])
                  << std::setw(11) << run["verdict"].get<std::string>();
      }
      std::cout << "\n";
    }
    std::cout << "\n";
  }
}

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

/// curves.csv (long format) and, per problem and mode, a TSV per quantity and a PNG of the
/// TV to pi* and of KL(pi||ref) over the steps (when gnuplot is installed).
void write_curves(const std::string& dir, const nlohmann::ordered_json& r,
                  const std::vector<report::curve>& curves) {
  ::mkdir(dir.c_str(), 0755);
  {
    std::ofstream csv(dir + "/curves.csv");
    if (!csv) throw file_error("cannot write to '" + dir + "'");
    csv << "problem,mode,spec,step,tv,kl,reward,objective\n" << std::setprecision(10);
    for (const auto& c : curves)
      for (const auto& p : c.points)
        csv << c.problem << "," << c.mode << "," << quoted(c.spec) << "," << p.step << ","
            << p.at.tv << "," << p.at.kl << "," << p.at.reward << "," << p.at.objective << "\n";
  }
  {
    std::ofstream js(dir + "/report.json");
    js << r.dump(1) << "\n";
  }
  const bool have_gnuplot = std::system("gnuplot --version >/dev/null 2>&1") == 0;
  std::vector<std::string> pngs;
  for (const auto& P : r["problems"])
    for (const char* mode : {"on-policy", "off-policy"}) {
      std::vector<const report::curve*> group;
      for (const auto& c : curves)
        if (c.problem == P["name"].get<std::string>() && c.mode == mode) group.push_back(&c);
      if (group.empty()) continue;
      const std::string stem = dir + "/" + P["name"].get<std::string>() + "-" + mode;
      for (const char* q : {"tv", "kl"}) {
        std::ofstream tsv(stem + "-" + q + ".tsv");
        tsv << std::setprecision(8) << "step";
        for (const auto* c : group) tsv << "\t" << c->spec;
        tsv << "\n";
        for (std::size_t k = 0; k < group[0]->points.size(); ++k) {
          tsv << group[0]->points[k].step;
          for (const auto* c : group) {
            tsv << "\t";
            if (k < c->points.size())
              tsv << (q[0] == 't' ? c->points[k].at.tv : c->points[k].at.kl);
            else
              tsv << "NaN";
          }
          tsv << "\n";
        }
      }
      if (!have_gnuplot) continue;
      std::ofstream gp(stem + ".gp");
      const double kl_star = P["optimum"]["kl"].get<double>();
      gp << "set terminal pngcairo size 1200,560 font ',9' noenhanced\n"
         << "set output '" << stem << ".png'\n"
         << "set datafile separator '\\t'\nset grid\nset xlabel 'batches'\n"
         << "set multiplot title 'problem " << P["name"].get<std::string>() << ", "
         << mode << " (exact measurements)'\n"
         << "set origin 0,0\nset size 0.37,0.95\n"
         << "set logscale y\nset ylabel 'TV(pi, pi*)'\nset key off\n"
         << "plot for [i=2:" << group.size() + 1 << "] '" << stem
         << "-tv.tsv' using 1:i with lines lw 1.2 title columnheader(i)\n"
         << "set origin 0.37,0\nset size 0.63,0.95\n"
         << "unset logscale y\nset ylabel 'KL(pi || ref)'\nset key outside right top\n"
         << "set arrow from graph 0, first " << kl_star << " to graph 1, first " << kl_star
         << " nohead dt 2\n"
         << "plot for [i=2:" << group.size() + 1 << "] '" << stem
         << "-kl.tsv' using 1:i with lines lw 1.2 title columnheader(i)\n"
         << "unset multiplot\n";
      gp.close();
      if (std::system(("gnuplot '" + stem + ".gp' >/dev/null 2>&1").c_str()) == 0)
        pngs.push_back(stem + ".png");
    }
  std::cerr << "report: wrote " << dir << "/curves.csv, " << dir << "/report.json";
  for (const auto& p : pngs) std::cerr << ", " << p;
  if (!have_gnuplot) std::cerr << " (gnuplot not found: no plots)";
  std::cerr << "\n";
}

}  // namespace

void add_report(CLI::App& app) {
  auto o = std::make_shared<options_>();
  CLI::App* cmd = app.add_subcommand(
      "report",
      "Audit the canonical KL specs on small tabular problems (which divergence each one's "
      "expected gradient follows, on- and off-policy) and train a toy KL-regularised policy "
      "with each, measuring exactly how far it ends from the analytic optimum "
      "pi*(y) ~ ref(y) exp(R(y)/beta).");
  cmd->add_option("--out", o->out, "write curves.csv, report.json, TSV curves and PNG plots here");
  cmd->add_option("--steps", o->cfg.steps, "sampled batches per training run")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seed", o->cfg.seed, "seed of the training sampler");
  cmd->add_option("--beta", o->cfg.beta, "KL coefficient of the objective")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--policy", o->cfg.policy_file,
                  "your own problem in the audit's policy format (vocab, steps, logits, "
                  "ref_logits, optional behavior_logits and reward)");
  cmd->add_option("--spec", o->cfg.specs, "specs to report (default: the canonical list)");
  cmd->add_option("--format", o->format, "output format")->check(CLI::IsMember({"table", "json"}));
  cmd->callback([o] {
    for (const auto& s : o->cfg.specs) parse_spec(s);  // fail before any work
    const std::vector<report::case_> cases =
        o->cfg.policy_file.empty() ? report::builtin_cases(o->cfg)
                                   : std::vector<report::case_>{user_case(o->cfg)};
    const bool tty = ::isatty(2) != 0;
    report::progress_fn progress;
    if (tty)
      progress = [](Index done, Index total, const std::string& what) {
        std::cerr << "\rreport: run " << std::min(done + 1, total) << "/" << total << "  "
                  << std::left << std::setw(60) << what << std::flush;
        if (what == "done") std::cerr << "\r" << std::string(90, ' ') << "\r" << std::flush;
      };
    std::vector<report::curve> curves;
    const nlohmann::ordered_json r =
        report::run(o->cfg, cases, progress, o->out.empty() ? nullptr : &curves);
    if (o->format == "json")
      std::cout << r.dump() << "\n";
    else
      print_tables(r);
    if (!o->out.empty()) write_curves(o->out, r, curves);
  });
}

}  // namespace klgrad::cli
