# Rollout engine suites (tests/rollout_*.cc); included by tests/CMakeLists.txt.

# The engine in process on real sandboxes, a real log and the real V4 codec,
# with the scripted policy: task validation, concurrent episodes, malformed
# calls, cancel + resume with fast-forward, an unreachable policy server.
if(TARGET paddock_rollout_engine)
  # The engine-wide episode scheduler alone, on a simulated clock.
  paddock_test(fair_scheduler_test fair_scheduler_test.cc)
  target_link_libraries(fair_scheduler_test PRIVATE paddock_rollout_engine)
  paddock_test(rollout_engine_test rollout_engine_test.cc)
  target_link_libraries(rollout_engine_test PRIVATE paddock_rollout_engine paddock_v4_tokenizer)
  add_dependencies(rollout_engine_test paddock-init)
  # What a trainer relies on: groups streamed and acknowledged, outcome
  # classes (infra ends masked, retried from the log), per-step timings.
  paddock_test(rollout_trainer_test rollout_trainer_test.cc)
  target_link_libraries(rollout_trainer_test PRIVATE paddock_rollout_engine paddock_v4_tokenizer)
  add_dependencies(rollout_trainer_test paddock-init)
  # Several rollouts on one engine: sandbox-time by weight, priority, queueing
  # (never failing) while the daemon is full.
  paddock_test(rollout_fair_test rollout_fair_test.cc)
  target_link_libraries(rollout_fair_test PRIVATE paddock_rollout_engine paddock_v4_tokenizer)
  add_dependencies(rollout_fair_test paddock-init)
endif()

# End to end: the real paddockd (SIGKILLed and restarted) and the paddock CLI:
# run, resume, export validated against docs/export.schema.json.
if(TARGET paddock_rollout_engine AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/rollout_e2e_test.cc)
  paddock_test(rollout_e2e_test rollout_e2e_test.cc)
  target_link_libraries(rollout_e2e_test PRIVATE paddock_replay nlohmann_json::nlohmann_json)
  target_compile_definitions(rollout_e2e_test PRIVATE PADDOCK_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  add_dependencies(rollout_e2e_test paddockd paddock paddock-init)
endif()
# The policy-server-killed case runs the real paddock-policy when it is built.
if(TARGET rollout_e2e_test AND TARGET paddock-policy)
  add_dependencies(rollout_e2e_test paddock-policy)
endif()
