#include "rollout/service/convert.h"

namespace paddock::service {

namespace {
Limits FromProto(const v1::Limits& p) {
  Limits d;
  d.cpu_millicores = p.cpu_millicores();
  d.memory_bytes = p.memory_bytes();
  d.pids = p.pids();
  d.disk_bytes = p.disk_bytes();
  return d;
}
}  // namespace

SandboxSpec FromProto(const v1::SandboxSpec& p) {
  SandboxSpec d;
  d.substrate = p.substrate();
  d.image = p.image();
  d.limits = FromProto(p.limits());
  d.env.insert(p.env().begin(), p.env().end());
  d.workdir = p.workdir();
  d.ttl_seconds = p.ttl_seconds();
  d.labels.insert(p.labels().begin(), p.labels().end());
  return d;
}

ExecRequest FromProto(const v1::ExecRequest& p) {
  ExecRequest d;
  d.argv.assign(p.argv().begin(), p.argv().end());
  d.shell = p.shell();
  d.stdin_data = p.stdin();
  d.env.insert(p.env().begin(), p.env().end());
  d.cwd = p.cwd();
  d.timeout_ms = p.timeout_ms();
  d.output_cap = p.output_cap_bytes();
  return d;
}

void ToProto(const Limits& d, v1::Limits* p) {
  p->set_cpu_millicores(d.cpu_millicores);
  p->set_memory_bytes(d.memory_bytes);
  p->set_pids(d.pids);
  p->set_disk_bytes(d.disk_bytes);
}

void ToProto(const SandboxInfo& d, v1::SandboxInfo* p) {
  p->set_id(d.id);
  p->set_substrate(d.spec.substrate);
  p->set_image(d.spec.image);
  p->set_created_unix_ms(d.created_unix_ms);
  p->set_expires_unix_ms(d.expires_unix_ms);
  p->set_state(d.state);
  p->mutable_labels()->insert(d.spec.labels.begin(), d.spec.labels.end());
  ToProto(d.spec.limits, p->mutable_limits());
}

void ToProto(const ExecResult& d, v1::ExecResult* p) {
  p->set_exit_code(d.exit_code);
  p->set_signal(d.signal);
  p->set_stdout(d.stdout_data);
  p->set_stderr(d.stderr_data);
  p->set_stdout_truncated(d.stdout_truncated);
  p->set_stderr_truncated(d.stderr_truncated);
  p->set_timed_out(d.timed_out);
  p->set_oom_killed(d.oom_killed);
  p->set_wall_time_us(d.wall_time_us);
  p->set_cpu_time_us(d.cpu_time_us);
  p->set_peak_memory_bytes(d.peak_memory_bytes);
}

void ToProto(const FileInfo& d, v1::FileInfo* p) {
  p->set_name(d.name);
  p->set_type(static_cast<v1::FileType>(d.type));  // the enums share their numbers
  p->set_size(d.size);
  p->set_mode(d.mode);
  p->set_mtime_unix_ms(d.mtime_unix_ms);
}

void ToProto(const Usage& d, v1::SandboxUsage* p) {
  p->set_memory_bytes(d.memory_bytes);
  p->set_cpu_time_us(d.cpu_time_us);
  p->set_pids(d.pids);
}

}  // namespace paddock::service
