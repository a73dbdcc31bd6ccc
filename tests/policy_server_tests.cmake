# Embedded policy engine: constrained decoding and the paddock-policy server.
# Constrained decoding (policy/engine/constrain) with the real tokenizer.
if(TARGET paddock_engine_constrain AND TARGET paddock_v4_decode)
  paddock_test(constrain_test constrain_test.cc)
  target_link_libraries(constrain_test PRIVATE paddock_engine_constrain paddock_v4_decode)
endif()

# The paddock-policy server over loopback HTTP, with the policy backends as clients.
if(TARGET paddock_engine_server AND TARGET paddock_v4_backends)
  paddock_test(policy_server_test policy_server_test.cc)
  target_link_libraries(policy_server_test PRIVATE paddock_engine_server paddock_v4_backends)
endif()

# The server with the real embedded engine, and the paddock-policy binary.
if(TARGET paddock_engine_server AND TARGET paddock_engine AND TARGET paddock_v4_backends)
  paddock_test(policy_server_e2e_test policy_server_e2e_test.cc)
  target_link_libraries(policy_server_e2e_test PRIVATE paddock_engine_server paddock_engine paddock_v4_backends)
  if(TARGET paddock-policy)
    target_compile_definitions(policy_server_e2e_test PRIVATE PADDOCK_POLICY_BIN="$<TARGET_FILE:paddock-policy>")
    add_dependencies(policy_server_e2e_test paddock-policy)
  endif()
endif()
