// The JSON of `coldstart bench --json` (README "coldstart bench") and its strict reader.
#include "coldstart/bench/result.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace coldstart::bench {
namespace {

using Json = nlohmann::ordered_json;

// The schema's version: a reader refuses a document of another one rather than guessing.
constexpr int kSchemaVersion = 1;

Error Bad(const std::string& where, const std::string& what) {
  return MakeError(Errc::kFormat, "coldstart bench JSON: " + where + ": " + what);
}

// A field of `obj` (an object named `where`), with its type checked.
Result<const Json*> Field(const Json& obj, const std::string& where, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end()) return Bad(where, std::string("\"") + key + "\" is missing");
  return &*it;
}

Result<std::string> String(const Json& obj, const std::string& where, const char* key) {
  CS_ASSIGN_OR_RETURN(const Json* v, Field(obj, where, key));
  if (!v->is_string()) return Bad(where, std::string("\"") + key + "\" is not a string");
  return v->get<std::string>();
}

Result<double> Seconds(const Json& obj, const std::string& where, const char* key) {
  CS_ASSIGN_OR_RETURN(const Json* v, Field(obj, where, key));
  if (!v->is_number()) return Bad(where, std::string("\"") + key + "\" is not a number");
  const double d = v->get<double>();
  if (!std::isfinite(d) || d < 0) return Bad(where, std::string("\"") + key + "\" is not a finite number >= 0");
  return d;
}

Result<std::uint64_t> Bytes(const Json& obj, const std::string& where, const char* key) {
  CS_ASSIGN_OR_RETURN(const Json* v, Field(obj, where, key));
  if (!v->is_number_unsigned()) return Bad(where, std::string("\"") + key + "\" is not an unsigned integer");
  return v->get<std::uint64_t>();
}

Result<int> Int(const Json& obj, const std::string& where, const char* key, int min) {
  CS_ASSIGN_OR_RETURN(const Json* v, Field(obj, where, key));
  if (!v->is_number_integer()) return Bad(where, std::string("\"") + key + "\" is not an integer");
  const auto i = v->get<std::int64_t>();
  if (i < min || i > std::numeric_limits<int>::max())
    return Bad(where, std::string("\"") + key + "\" is out of range (" + std::to_string(i) + ")");
  return static_cast<int>(i);
}

Result<bool> Bool(const Json& obj, const std::string& where, const char* key) {
  CS_ASSIGN_OR_RETURN(const Json* v, Field(obj, where, key));
  if (!v->is_boolean()) return Bad(where, std::string("\"") + key + "\" is not true or false");
  return v->get<bool>();
}

Result<const Json*> Array(const Json& obj, const std::string& where, const char* key) {
  CS_ASSIGN_OR_RETURN(const Json* v, Field(obj, where, key));
  if (!v->is_array()) return Bad(where, std::string("\"") + key + "\" is not an array");
  return v;
}

Result<Phase> PhaseFromJson(const Json& j, const std::string& where) {
  if (!j.is_object()) return Bad(where, "is not an object");
  Phase p;
  CS_ASSIGN_OR_RETURN(p.name, String(j, where, "name"));
  if (p.name.empty()) return Bad(where, "\"name\" is empty");
  CS_ASSIGN_OR_RETURN(p.start_s, Seconds(j, where, "start_s"));
  CS_ASSIGN_OR_RETURN(p.end_s, Seconds(j, where, "end_s"));
  if (p.end_s < p.start_s) return Bad(where, "\"end_s\" is before \"start_s\"");
  CS_ASSIGN_OR_RETURN(p.bytes, Bytes(j, where, "bytes"));
  return p;
}

Result<Sample> SampleFromJson(const Json& j, const std::string& where) {
  if (!j.is_object()) return Bad(where, "is not an object");
  Sample s;
  CS_ASSIGN_OR_RETURN(s.t_s, Seconds(j, where, "t_s"));
  CS_ASSIGN_OR_RETURN(s.bytes, Bytes(j, where, "bytes"));
  return s;
}

Result<RunRow> RowFromJson(const Json& j, const std::string& where) {
  if (!j.is_object()) return Bad(where, "is not an object");
  RunRow r;
  CS_ASSIGN_OR_RETURN(r.scenario, String(j, where, "scenario"));
  if (r.scenario.empty()) return Bad(where, "\"scenario\" is empty");
  CS_ASSIGN_OR_RETURN(r.peer, String(j, where, "peer"));
  if (r.peer.empty()) return Bad(where, "\"peer\" is empty");
  CS_ASSIGN_OR_RETURN(r.run, Int(j, where, "run", 0));
  CS_ASSIGN_OR_RETURN(r.replica, Int(j, where, "replica", -1));
  CS_ASSIGN_OR_RETURN(r.ok, Bool(j, where, "ok"));
  CS_ASSIGN_OR_RETURN(r.error, String(j, where, "error"));
  CS_ASSIGN_OR_RETURN(r.note, String(j, where, "note"));
  CS_ASSIGN_OR_RETURN(r.cold, Bool(j, where, "cold"));
  CS_ASSIGN_OR_RETURN(r.cold_method, String(j, where, "cold_method"));
  CS_ASSIGN_OR_RETURN(r.total_s, Seconds(j, where, "total_s"));
  CS_ASSIGN_OR_RETURN(r.bytes, Bytes(j, where, "bytes"));
  CS_ASSIGN_OR_RETURN(r.origin_bytes, Bytes(j, where, "origin_bytes"));
  CS_ASSIGN_OR_RETURN(const Json* phases, Array(j, where, "phases"));
  for (std::size_t i = 0; i < phases->size(); ++i) {
    CS_ASSIGN_OR_RETURN(auto p, PhaseFromJson((*phases)[i], where + ".phases[" + std::to_string(i) + "]"));
    r.phases.push_back(std::move(p));
  }
  CS_ASSIGN_OR_RETURN(const Json* samples, Array(j, where, "samples"));
  for (std::size_t i = 0; i < samples->size(); ++i) {
    CS_ASSIGN_OR_RETURN(auto s, SampleFromJson((*samples)[i], where + ".samples[" + std::to_string(i) + "]"));
    r.samples.push_back(s);
  }
  return r;
}

}  // namespace

std::string ToJson(const Report& report) {
  Json j;
  j["schema"] = kSchemaVersion;
  j["source"] = report.source;
  j["command"] = report.command;
  j["machine"] = report.machine;
  j["date"] = report.date;
  j["conditions"] = report.conditions;
  j["model_bytes"] = report.model_bytes;
  Json rows = Json::array();
  for (const auto& r : report.rows) {
    Json row;
    row["scenario"] = r.scenario;
    row["peer"] = r.peer;
    row["run"] = r.run;
    row["replica"] = r.replica;
    row["ok"] = r.ok;
    row["error"] = r.error;
    row["note"] = r.note;
    row["cold"] = r.cold;
    row["cold_method"] = r.cold_method;
    row["total_s"] = r.total_s;
    row["bytes"] = r.bytes;
    row["origin_bytes"] = r.origin_bytes;
    Json phases = Json::array();
    for (const auto& p : r.phases)
      phases.push_back({{"name", p.name}, {"start_s", p.start_s}, {"end_s", p.end_s}, {"bytes", p.bytes}});
    row["phases"] = std::move(phases);
    Json samples = Json::array();
    for (const auto& s : r.samples) samples.push_back({{"t_s", s.t_s}, {"bytes", s.bytes}});
    row["samples"] = std::move(samples);
    rows.push_back(std::move(row));
  }
  j["rows"] = std::move(rows);
  return j.dump(1) + "\n";
}

Result<Report> ReportFromJson(std::string_view text) {
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Bad("document", "not valid JSON");
  if (!j.is_object()) return Bad("document", "is not an object");
  const std::string where = "document";
  CS_ASSIGN_OR_RETURN(int schema, Int(j, where, "schema", 0));
  if (schema != kSchemaVersion)
    return Bad(where, "\"schema\" is " + std::to_string(schema) + ", this coldstart reads " + std::to_string(kSchemaVersion));
  Report rep;
  CS_ASSIGN_OR_RETURN(rep.source, String(j, where, "source"));
  CS_ASSIGN_OR_RETURN(rep.command, String(j, where, "command"));
  CS_ASSIGN_OR_RETURN(rep.machine, String(j, where, "machine"));
  CS_ASSIGN_OR_RETURN(rep.date, String(j, where, "date"));
  CS_ASSIGN_OR_RETURN(rep.conditions, String(j, where, "conditions"));
  CS_ASSIGN_OR_RETURN(rep.model_bytes, Bytes(j, where, "model_bytes"));
  CS_ASSIGN_OR_RETURN(const Json* rows, Array(j, where, "rows"));
  for (std::size_t i = 0; i < rows->size(); ++i) {
    CS_ASSIGN_OR_RETURN(auto r, RowFromJson((*rows)[i], "rows[" + std::to_string(i) + "]"));
    rep.rows.push_back(std::move(r));
  }
  return rep;
}

}  // namespace coldstart::bench
