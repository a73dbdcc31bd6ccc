# Trajectory log suites; included by tests/CMakeLists.txt.

# The log against a real RocksDB in temp dirs: keys, round trips, group commit,
# SIGKILLed writers, verify, backup/restore, a corrupted SST, a full tmpfs
# (mounted by the test; skipped without root).
if(TARGET paddock_replay)
  paddock_test(replay_log_test replay_log_test.cc)
  target_link_libraries(replay_log_test PRIVATE paddock_replay nlohmann_json::nlohmann_json)
endif()

# Idempotent Exec/WriteFile, episode bindings and the Log service end to end:
# the real paddockd (SIGKILLed and restarted on its state dir), its real log,
# driven through the C++ client, raw gRPC and the paddock CLI.
if(TARGET paddock_replay)
  paddock_test(replay_exec_test replay_exec_test.cc)
  target_link_libraries(replay_exec_test PRIVATE paddock_client paddock_proto_convert paddock_replay
                        nlohmann_json::nlohmann_json)
  add_dependencies(replay_exec_test paddockd paddock paddock-init)
endif()

# Fault injection (issue 4, part 7): the real paddockd SIGKILLed at >= 50 random
# points under a workload of concurrent keyed episodes, the client harness
# SIGKILLed instead, a corrupted SST, the log on a full tmpfs (mounted by the
# test; skipped without root).
if(TARGET paddock_replay)
  paddock_test(replay_fault_test replay_fault_test.cc)
  target_link_libraries(replay_fault_test PRIVATE paddock_client)
  add_dependencies(replay_fault_test paddockd paddock paddock-init)
endif()
