// Reading the policy file of `klgrad audit` and `klgrad report`: {"vocab", "steps",
// "logits", "ref_logits", "behavior_logits"} with one row of V logits per prefix.
#pragma once

#include "errors.hpp"
#include "json_input.hpp"

#include <klgrad/oracle/tabular.hpp>

#include <cmath>
#include <string>
#include <utility>

namespace klgrad::frontend {

using oracle::Index;
using oracle::matrix;
using oracle::tabular;

/// in[key] as an integer >= least; schema_error naming the key otherwise.
inline Index positive_integer(const nlohmann::json& in, const char* key, Index least) {
  if (!in.contains(key)) throw schema_error(std::string("policy file has no '") + key + "'");
  const auto& x = in[key];
  if (!x.is_number_integer() || x.get<long long>() < least)
    throw schema_error(std::string("'") + key + "' must be an integer >= " + std::to_string(least) +
                       ", got " + shown(x));
  return Index(x.get<long long>());
}

/// in[key] as a tabular policy of V tokens and T steps: 1 + V + ... + V^(T-1) rows of V
/// finite logits; schema_error naming the key, the row and the entry otherwise.
inline tabular read_logits(const nlohmann::json& in, const char* key, Index v, Index t) {
  if (!in.contains(key)) throw schema_error(std::string("policy file has no '") + key + "'");
  const auto& x = in[key];
  const Index rows = tabular::rows_for(v, t);
  if (!x.is_array() || Index(x.size()) != rows)
    throw schema_error(std::string("'") + key + "' must be a list of " + std::to_string(rows) +
                       " rows (1 + V + ... + V^(T-1) for V = " + std::to_string(v) +
                       ", T = " + std::to_string(t) + "), got " +
                       (x.is_array() ? std::to_string(x.size()) + " rows" : x.type_name()));
  matrix z(rows, v);
  for (Index r = 0; r < rows; ++r) {
    const auto& row = x[std::size_t(r)];
    if (!row.is_array() || Index(row.size()) != v)
      throw schema_error(std::string(key) + " row " + std::to_string(r) + " must hold " +
                         std::to_string(v) + " logits, got " +
                         (row.is_array() ? std::to_string(row.size()) : shown(row)));
    for (Index i = 0; i < v; ++i) {
      const auto& e = row[std::size_t(i)];
      if (!e.is_number() || !std::isfinite(e.get<double>()))
        throw schema_error(std::string(key) + "[" + std::to_string(r) + "][" + std::to_string(i) +
                           "] must be a finite number, got " + shown(e));
      z(r, i) = e.get<double>();
    }
  }
  return tabular(v, t, std::move(z));
}

}  // namespace klgrad::frontend
