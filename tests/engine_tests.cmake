# The embedded engine's model, numerics, weights, inference and KV report
# (tests/engine_*_test.cc, one executable); included by tests/CMakeLists.txt.
if(TARGET paddock_engine)
  paddock_test(engine_test engine_numerics_test.cc engine_weights_test.cc engine_attention_test.cc
               engine_inference_test.cc engine_kv_report_test.cc engine_weight_update_test.cc)
  target_link_libraries(engine_test PRIVATE paddock_engine nlohmann_json::nlohmann_json)
endif()
