# A FetchContent dependency provider that refuses every download, as Homebrew's
# std_cmake_args install one ("Refusing to populate dependency ... please use a formula
# dependency or add a resource to the formula"): tests/formula_build.rs passes it to
# mlx-c's configure with CMAKE_PROJECT_TOP_LEVEL_INCLUDES. CMake calls a provider only for
# a dependency without FETCHCONTENT_SOURCE_DIR_<NAME> (FetchContent.cmake,
# FetchContent_MakeAvailable), so a configure that passes took every source from one.
cmake_minimum_required(VERSION 3.24)
macro(mlx_serve_refuse_fetchcontent method name)
  message(FATAL_ERROR "Refusing to populate dependency '${name}' with FetchContent: no resource feeds it")
endmacro()
cmake_language(SET_DEPENDENCY_PROVIDER mlx_serve_refuse_fetchcontent
               SUPPORTED_METHODS FETCHCONTENT_MAKEAVAILABLE_SERIAL)
