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

