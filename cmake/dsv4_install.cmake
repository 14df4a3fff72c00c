include(CMakePackageConfigHelpers)
set(DSV4_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/dsv4)
install(TARGETS dsv4 dsv4_static EXPORT dsv4-targets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/dsv4 DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT dsv4-targets NAMESPACE dsv4:: DESTINATION ${DSV4_CMAKE_DIR})
configure_package_config_file(cmake/dsv4-config.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/dsv4-config.cmake
                              INSTALL_DESTINATION ${DSV4_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/dsv4-config-version.cmake
                                 COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/dsv4-config.cmake ${CMAKE_CURRENT_BINARY_DIR}/dsv4-config-version.cmake
        DESTINATION ${DSV4_CMAKE_DIR})
if(TARGET dsv4_cli)
  install(TARGETS dsv4_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
