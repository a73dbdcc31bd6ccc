# The main job (scripts/demo.sh, `make demo`) in its reduced mode: 8 episodes
# against the real paddockd, paddock-policy and sandboxes, the daemon SIGKILLed
# mid-run and the rollout resumed; tests/demo_test.sh checks what the demo
# promises (all finished, nothing ran twice, the export where it says, nothing
# left running) and its --help and usage errors. Included by tests/CMakeLists.txt.
if(TARGET paddockd AND TARGET paddock AND TARGET paddock-policy AND TARGET paddock-init)
  add_test(NAME demo_test COMMAND bash ${PROJECT_SOURCE_DIR}/tests/demo_test.sh ${CMAKE_BINARY_DIR})
  # The Debian python3 image comes from BUILD/test-images, shared with
  # debian_image_test (a cold cache builds it first: minutes).
  set_tests_properties(demo_test PROPERTIES TIMEOUT 1500 RESOURCE_LOCK debian_test_image)
endif()
