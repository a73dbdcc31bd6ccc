# V4 policy engine tests that need more than one library; included by
# tests/CMakeLists.txt.

# `paddock v4 encode | decode | tokenize`, spawned as a user would run them.
# decode/tokenize cases run only when paddock was built with those libraries.
if(TARGET paddock)
  paddock_test(v4_cli_test v4_cli_test.cc)
  target_link_libraries(v4_cli_test PRIVATE nlohmann_json::nlohmann_json)
  target_compile_definitions(v4_cli_test PRIVATE PADDOCK_TEST_DATA="${CMAKE_CURRENT_SOURCE_DIR}/data")
  if(TARGET paddock_v4_decode)
    target_compile_definitions(v4_cli_test PRIVATE PADDOCK_HAVE_V4_DECODE=1)
  endif()
  if(TARGET paddock_v4_tokenizer)
    target_compile_definitions(v4_cli_test PRIVATE PADDOCK_HAVE_V4_TOKENIZER=1)
  endif()
  add_dependencies(v4_cli_test paddock)
endif()

# Token-in-token-out episode context and context manager, on the encoding
# vectors with the real tokenizer (cases skip when tokenizer.json is absent);
# the policy turns are decoded back with the decoder where it is built.
if(TARGET paddock_v4_context)
  paddock_test(v4_context_test v4_context_test.cc)
  target_link_libraries(v4_context_test PRIVATE paddock_v4_context)
  target_compile_definitions(v4_context_test PRIVATE PADDOCK_TEST_DATA="${CMAKE_CURRENT_SOURCE_DIR}/data")
  if(TARGET paddock_v4_decode)
    target_link_libraries(v4_context_test PRIVATE paddock_v4_decode)
    target_compile_definitions(v4_context_test PRIVATE PADDOCK_HAVE_V4_DECODE=1)
  endif()
endif()

# Inference-server backends against an in-test HTTP server on loopback
# (tests/v4_backends_test.cc).
if(TARGET paddock_v4_backends)
  paddock_test(v4_backends_test v4_backends_test.cc)
  target_link_libraries(v4_backends_test PRIVATE paddock_v4_backends)
endif()

# The suites that need the V4 tokenizer skip their cases without it; under
# `make test` (whose install-deps.sh fetches it) its absence is a failure here.
add_test(NAME v4_tokenizer_installed
         COMMAND sh -c "f=\"\${PADDOCK_TOKENIZER:-/usr/local/share/paddock/deepseek-v3-tokenizer.json}\"; test -s \"$f\" || { echo \"no V4 tokenizer at $f: scripts/install-deps.sh installs it\"; exit 1; }")
