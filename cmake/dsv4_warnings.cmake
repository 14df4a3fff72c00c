# Target-scoped compile settings: warnings, sanitizers, ISA. Never directory-wide.
function(dsv4_target_settings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-Wall -Wextra -Wshadow -Wnon-virtual-dtor -Wno-unused-parameter>
    $<$<COMPILE_LANG_AND_ID:C,GNU,Clang>:-Wall -Wextra -Wpedantic>
    # GCC 12 reports false positives inside libstdc++'s string code at -O3 (GCC bugs 105329, 105651, 107138).
    $<$<COMPILE_LANG_AND_ID:CXX,GNU>:-Wno-restrict -Wno-stringop-overflow -Wno-array-bounds>
    # A product rounds before its sum, as in the reference, unless the code asks for an FMA: GCC otherwise fuses
    # a*b + c (intrinsics included) wherever the target has FMA, e.g. in the AVX-512 kernels or with -march=native.
    $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-ffp-contract=off>)
  if(DSV4_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(DSV4_NATIVE)
    target_compile_options(${target} PRIVATE -march=native)
  endif()
  dsv4_target_sanitizers(${target})
endfunction()

function(dsv4_target_sanitizers target)
  set(_san "")
  if(DSV4_SANITIZE_ADDRESS)
    list(APPEND _san address)
  endif()
  if(DSV4_SANITIZE_UNDEFINED)
    list(APPEND _san undefined)
  endif()
  if(DSV4_SANITIZE_THREAD)
    list(APPEND _san thread)
  endif()
  if(_san)
    list(JOIN _san "," _san_list)
    target_compile_options(${target} PRIVATE -fsanitize=${_san_list} -fno-omit-frame-pointer
                                             -fno-sanitize-recover=undefined)
    target_link_options(${target} PRIVATE -fsanitize=${_san_list})
  endif()
endfunction()
