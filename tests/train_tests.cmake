# The PyTorch twin of the embedded engine (examples/train/); included by tests/CMakeLists.txt.
#   train_twin_parity   paddock-policy --exact-kv samples sequences (temperature 1, past the
#                       window and the CSA top-k), the twin recomputes every token's logprob
#                       from the same safetensors file: |delta| <= 1e-4 each, for tiny and
#                       small; the emulated (FP8/BF16/int4) engine's mismatch is printed.
#                       Skipped (77) without python3-torch (scripts/install-deps.sh --train).
#   train_twin_roundtrip  the twin's safetensors writer: a file it saves is loaded by
#                       paddock-policy and generates the same tokens as the original.
if(NOT PADDOCK_PYTHON3 OR NOT TARGET paddock-policy)
  return()
endif()
foreach(cfg tiny small)
  add_test(NAME train_twin_parity_${cfg}
           COMMAND ${PROJECT_SOURCE_DIR}/tests/train_twin_test.sh parity ${cfg})
  set_tests_properties(train_twin_parity_${cfg} PROPERTIES
    TIMEOUT 600 SKIP_RETURN_CODE 77
    ENVIRONMENT "PYTHON3=${PADDOCK_PYTHON3};PADDOCK_POLICY=$<TARGET_FILE:paddock-policy>;PYTHONDONTWRITEBYTECODE=1")
endforeach()
add_test(NAME train_twin_roundtrip COMMAND ${PROJECT_SOURCE_DIR}/tests/train_twin_test.sh roundtrip tiny)
set_tests_properties(train_twin_roundtrip PROPERTIES
  TIMEOUT 300 SKIP_RETURN_CODE 77
  ENVIRONMENT "PYTHON3=${PADDOCK_PYTHON3};PADDOCK_POLICY=$<TARGET_FILE:paddock-policy>;PYTHONDONTWRITEBYTECODE=1")
# train_sft_smoke: examples/train/sft_check.py: sft.py on an export-shaped file (loss on
# loss_mask tokens only, train: false skipped), the loss falls, and paddock-policy serving
# the saved weights generates greedily the answer the twin was trained on.
add_test(NAME train_sft_smoke COMMAND ${PROJECT_SOURCE_DIR}/tests/train_twin_test.sh sft tiny)
set_tests_properties(train_sft_smoke PROPERTIES
  TIMEOUT 600 SKIP_RETURN_CODE 77
  ENVIRONMENT "PYTHON3=${PADDOCK_PYTHON3};PADDOCK_POLICY=$<TARGET_FILE:paddock-policy>;PYTHONDONTWRITEBYTECODE=1")
# train_copy_smoke: examples/train/copy_check.py: copy augmentation (numbers replaced the same
# way everywhere, exit codes, prompts and constants kept, no held-out number drawn), sft.py
# --number-vector changing exactly the number tokens' embedding rows by one vector, and
# weights_pack.py keeping those rows: unpacked, paddock-policy serves the twin's logprobs.
add_test(NAME train_copy_smoke COMMAND ${PROJECT_SOURCE_DIR}/tests/train_twin_test.sh copy tiny)
set_tests_properties(train_copy_smoke PROPERTIES
  TIMEOUT 300 SKIP_RETURN_CODE 77
  ENVIRONMENT "PYTHON3=${PADDOCK_PYTHON3};PADDOCK_POLICY=$<TARGET_FILE:paddock-policy>;PYTHONDONTWRITEBYTECODE=1")
# train_loop_smoke: examples/train/loop_check.py against a real paddockd and paddock-policy
# (busybox tasks): the oracle rollout (scripted policy, a per-task script) is rewarded 1.0 on
# every episode; sft.py on its export lowers the loss on the policy tokens; grpo.py runs one
# step end to end (groups streamed, new weights written and loaded with `rollout
# update-policy`: paddock-policy then reports version step-1). Skipped (77) without
# python3-torch or root.
if(TARGET paddockd AND TARGET paddock AND TARGET paddock-init)
  add_test(NAME train_loop_smoke COMMAND ${PROJECT_SOURCE_DIR}/tests/train_twin_test.sh loop tiny)
  set_tests_properties(train_loop_smoke PROPERTIES
    TIMEOUT 600 SKIP_RETURN_CODE 77
    ENVIRONMENT "PYTHON3=${PADDOCK_PYTHON3};PADDOCK_POLICY=$<TARGET_FILE:paddock-policy>;PADDOCK_BUILD=${CMAKE_BINARY_DIR};PYTHONDONTWRITEBYTECODE=1")
endif()
