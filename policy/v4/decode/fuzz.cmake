# libFuzzer target for the streaming DSML parser (policy/v4/decode/dsml_parser_fuzz.cc).
# Built with clang++ (Debian's clang + libclang-rt-dev provide libFuzzer) as a
# custom command, compiling the parser sources directly, so it does not depend
# on the GCC-built library. Part of ALL, so `make test` has it; the ctest entry
# runs it for a fixed 20 s, seeded from the completions of decoding_public.jsonl
# (tests/data/v4/fuzz_seed: one file per case, first byte = mode flags).
find_program(PADDOCK_CLANGXX NAMES clang++-14 clang++)
if(NOT PADDOCK_CLANGXX)
  message(STATUS "clang++ not found: dsml_parser_fuzz is not built")
  return()
endif()

set(_fuzz_dir ${CMAKE_CURRENT_LIST_DIR})
set(_fuzz_bin ${CMAKE_CURRENT_BINARY_DIR}/fuzz/dsml_parser_fuzz)
set(_fuzz_srcs ${_fuzz_dir}/dsml_parser_fuzz.cc ${_fuzz_dir}/dsml_parser.cc ${_fuzz_dir}/decoder.cc)
set(_fuzz_hdrs ${_fuzz_dir}/dsml_parser.h ${_fuzz_dir}/decoder.h)

add_custom_command(
  OUTPUT ${_fuzz_bin}
  COMMAND ${PADDOCK_CLANGXX} -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined
          -fno-sanitize-recover=undefined -DFMT_HEADER_ONLY -I${PROJECT_SOURCE_DIR}
          ${_fuzz_srcs} -o ${_fuzz_bin}
  DEPENDS ${_fuzz_srcs} ${_fuzz_hdrs}
  COMMENT "Building libFuzzer target dsml_parser_fuzz with clang++"
  VERBATIM)
add_custom_target(dsml_parser_fuzz ALL DEPENDS ${_fuzz_bin})

set(_fuzz_corpus ${CMAKE_CURRENT_BINARY_DIR}/fuzz/corpus)
file(MAKE_DIRECTORY ${_fuzz_corpus})
add_test(NAME dsml_parser_fuzz
         COMMAND ${_fuzz_bin} -max_total_time=20 -rss_limit_mb=1024 -timeout=10
                 -max_len=8192 -print_final_stats=1
                 -artifact_prefix=${CMAKE_CURRENT_BINARY_DIR}/fuzz/
                 -dict=${_fuzz_dir}/dsml_parser_fuzz.dict
                 ${_fuzz_corpus} ${PROJECT_SOURCE_DIR}/tests/data/v4/fuzz_seed)
set_tests_properties(dsml_parser_fuzz PROPERTIES TIMEOUT 120)
