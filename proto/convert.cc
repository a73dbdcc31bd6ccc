#include "proto/convert.h"

namespace paddock::v1conv {

Limits FromProto(const v1::Limits& p) {
  Limits d;
  d.cpu_millicores = p.cpu_millicores();
  d.memory_bytes = p.memory_bytes();
  d.pids = p.pids();
  d.disk_bytes = p.disk_bytes();
  return d;
}

void ToProto(const Limits& d, v1::Limits* p) {
  p->set_cpu_millicores(d.cpu_millicores);
  p->set_memory_bytes(d.memory_bytes);
  p->set_pids(d.pids);
  p->set_disk_bytes(d.disk_bytes);
}

SandboxSpec FromProto(const v1::SandboxSpec& p) {
  SandboxSpec d;
  d.substrate = p.substrate();
  d.image = p.image();
  d.limits = FromProto(p.limits());
  d.env.insert(p.env().begin(), p.env().end());
  d.workdir = p.workdir();
  d.ttl_seconds = p.ttl_seconds();
  d.labels.insert(p.labels().begin(), p.labels().end());
  d.network_allow.assign(p.network_allow().begin(), p.network_allow().end());
  return d;
}

void ToProto(const SandboxSpec& d, v1::SandboxSpec* p) {
  p->set_substrate(d.substrate);
  p->set_image(d.image);
  ToProto(d.limits, p->mutable_limits());
  p->mutable_env()->insert(d.env.begin(), d.env.end());
  p->set_workdir(d.workdir);
  p->set_ttl_seconds(d.ttl_seconds);
  p->mutable_labels()->insert(d.labels.begin(), d.labels.end());
  for (const auto& a : d.network_allow) p->add_network_allow(a);
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
  d.sealed = p.sealed();
  return d;
}

void ToProto(const ExecRequest& d, v1::ExecRequest* p) {
  for (const auto& a : d.argv) p->add_argv(a);
  p->set_shell(d.shell);
  p->set_stdin(d.stdin_data);
  p->mutable_env()->insert(d.env.begin(), d.env.end());
  p->set_cwd(d.cwd);
  p->set_timeout_ms(d.timeout_ms);
  p->set_output_cap_bytes(d.output_cap);
  p->set_sealed(d.sealed || !d.trusted_program.empty());
}

ExecResult FromProto(const v1::ExecResult& p) {
  ExecResult d;
  d.exit_code = p.exit_code();
  d.signal = p.signal();
  d.stdout_data = p.stdout();
  d.stderr_data = p.stderr();
  d.stdout_truncated = p.stdout_truncated();
  d.stderr_truncated = p.stderr_truncated();
  d.timed_out = p.timed_out();
  d.oom_killed = p.oom_killed();
  d.wall_time_us = p.wall_time_us();
  d.cpu_time_us = p.cpu_time_us();
  d.peak_memory_bytes = p.peak_memory_bytes();
  return d;
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

FileType FromProto(v1::FileType p) { return static_cast<FileType>(p); }

v1::FileType ToProto(FileType d) { return static_cast<v1::FileType>(d); }

FileInfo FromProto(const v1::FileInfo& p) {
  FileInfo d;
  d.name = p.name();
  d.type = FromProto(p.type());
  d.size = p.size();
  d.mode = p.mode();
  d.mtime_unix_ms = p.mtime_unix_ms();
  return d;
}

void ToProto(const FileInfo& d, v1::FileInfo* p) {
  p->set_name(d.name);
  p->set_type(ToProto(d.type));
  p->set_size(d.size);
  p->set_mode(d.mode);
  p->set_mtime_unix_ms(d.mtime_unix_ms);
}

Usage FromProto(const v1::SandboxUsage& p) {
  Usage d;
  d.memory_bytes = p.memory_bytes();
  d.cpu_time_us = p.cpu_time_us();
  d.pids = p.pids();
  return d;
}

void ToProto(const Usage& d, v1::SandboxUsage* p) {
  p->set_memory_bytes(d.memory_bytes);
  p->set_cpu_time_us(d.cpu_time_us);
  p->set_pids(d.pids);
}

}  // namespace paddock::v1conv
