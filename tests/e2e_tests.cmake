# End-to-end gaps of the sandbox API; included by tests/CMakeLists.txt.

# ExecStream cancellation through the real paddockd: a cancelled or vanished
# client gets its command killed in the sandbox (container, function, microvm).
if(TARGET paddock_client AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/exec_cancel_test.cc)
  paddock_test(exec_cancel_test exec_cancel_test.cc)
  target_link_libraries(exec_cancel_test PRIVATE paddock_client paddock_sandbox)
  add_dependencies(exec_cancel_test paddockd paddock paddock-init)
endif()

# A "substrate": "microvm" task through paddockd and `paddock run` (QEMU
# guests; TCG where KVM cannot run guests, as the microvm suites do).
if(TARGET paddock_rollout_engine AND TARGET paddockd AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/rollout_microvm_test.cc)
  paddock_test(rollout_microvm_test rollout_microvm_test.cc)
  target_link_libraries(rollout_microvm_test PRIVATE paddock_sandbox nlohmann_json::nlohmann_json)
  add_dependencies(rollout_microvm_test paddockd paddock paddock-init)
endif()
