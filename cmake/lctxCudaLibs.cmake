# cuDNN and NCCL, which find_package(CUDAToolkit) does not provide, as the imported targets
# lctx::cudnn and lctx::nccl, looked up beside the CUDA toolkit (the cache variables
# LCTX_{CUDNN,NCCL}_{LIBRARY,INCLUDE} override the search). Included after
# find_package(CUDAToolkit) by lctx's own build and by the installed lctxConfig.cmake, so both
# link the same way. Leaves the names of what was not found in LCTX_CUDA_LIBS_MISSING.
set(LCTX_CUDA_LIBS_MISSING)
foreach(_lctx_lib IN ITEMS cudnn nccl)
  string(TOUPPER ${_lctx_lib} _lctx_var)
  find_library(LCTX_${_lctx_var}_LIBRARY ${_lctx_lib}
               HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/lib/x86_64-linux-gnu /usr/local/lib)
  find_path(LCTX_${_lctx_var}_INCLUDE ${_lctx_lib}.h
            HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/include /usr/local/include)
  if(NOT LCTX_${_lctx_var}_LIBRARY OR NOT LCTX_${_lctx_var}_INCLUDE)
    list(APPEND LCTX_CUDA_LIBS_MISSING ${_lctx_lib})
  elseif(NOT TARGET lctx::${_lctx_lib})
    add_library(lctx::${_lctx_lib} UNKNOWN IMPORTED)
    set_target_properties(lctx::${_lctx_lib} PROPERTIES
      IMPORTED_LOCATION "${LCTX_${_lctx_var}_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${LCTX_${_lctx_var}_INCLUDE}")
  endif()
endforeach()
unset(_lctx_lib)
unset(_lctx_var)
