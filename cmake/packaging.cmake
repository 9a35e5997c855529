# Debian packages, made by CPack's DEB generator (tests/deploy/test_deb.sh
# builds, lints, installs and removes them):
#
#   cmake -S . -B build-deb -DLMAP_PACKAGE=ON -DCMAKE_BUILD_TYPE=Release \
#         -DLMAP_BUILD_TESTS=OFF -DCMAKE_INSTALL_PREFIX=/usr
#   cmake --build build-deb -j && (cd build-deb && cpack -G DEB)
#
#   lmap          lmap and lmapd, their man pages, the systemd unit, an
#                 example /etc/lmap/lmapd.env, and the system user lmap
#   liblmap1      the client library (soname liblmap.so.LMAP_ABI_VERSION)
#   liblmap-dev   its headers, static library, CMake package and lmap.pc
#
# The run-time dependencies are read from the binaries (dpkg-shlibdeps).
# LMAP_PACKAGE also installs the system files (the unit, /etc, the man
# pages), which a plain `cmake --install --prefix DIR` leaves out.

set(pkg_dir ${PROJECT_SOURCE_DIR}/deploy/debian)
set(doc_dir ${CMAKE_INSTALL_DATADIR}/doc)

# Debian's hardening: fortified libc calls, read-only relocations bound at
# start.
target_compile_definitions(lmap_flags INTERFACE _FORTIFY_SOURCE=2)
target_link_options(lmap_flags INTERFACE -Wl,-z,relro -Wl,-z,now)

# Man pages from --help (help2man), compressed as Debian wants them; the
# NAME line is a short summary per program.
set(lmap_summary "import, inspect, verify and query label-map stores")
set(lmapd_summary "serve soft labels from a label-map store over HTTP")
find_program(HELP2MAN help2man REQUIRED)
find_program(GZIP gzip REQUIRED)
set(man_dir ${CMAKE_CURRENT_BINARY_DIR}/man)
foreach(page lmap:1 lmapd:8)
  string(REPLACE ":" ";" parts ${page})
  list(GET parts 0 prog)
  list(GET parts 1 section)
  add_custom_command(
    OUTPUT ${man_dir}/${prog}.${section}.gz
    COMMAND ${CMAKE_COMMAND} -E make_directory ${man_dir}
    COMMAND ${HELP2MAN} --no-info --no-discard-stderr --section=${section}
            "--name=${${prog}_summary}" --version-string=${PROJECT_VERSION}
            --include=${pkg_dir}/${prog}.h2m
            --output=${man_dir}/${prog}.${section} $<TARGET_FILE:${prog}>
    COMMAND ${GZIP} -9nf ${man_dir}/${prog}.${section}
    DEPENDS ${prog} ${pkg_dir}/${prog}.h2m
    COMMENT "Man page ${prog}(${section}) from ${prog} --help"
    VERBATIM)
  list(APPEND man_pages ${man_dir}/${prog}.${section}.gz)
  install(FILES ${man_dir}/${prog}.${section}.gz
          DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section} COMPONENT lmap)
endforeach()
add_custom_target(man_pages ALL DEPENDS ${man_pages})

install(FILES ${PROJECT_SOURCE_DIR}/deploy/systemd/lmapd.service
        DESTINATION /lib/systemd/system COMPONENT lmap)
install(FILES ${PROJECT_SOURCE_DIR}/deploy/systemd/lmapd.env
        DESTINATION /etc/lmap COMPONENT lmap)

set(LMAP_PACKAGE_CONTACT "lmap maintainers <lmap@localhost>" CACHE STRING
  "The packages' Maintainer: your lab's name and address")
set(CPACK_PACKAGE_CONTACT "${LMAP_PACKAGE_CONTACT}")
set(LMAP_DEB_RELEASE 1)

# /usr/share/doc/PACKAGE: copyright, the upstream changelog (CHANGELOG.md)
# and the packaging's own (Debian's format), for each package.
string(TIMESTAMP LMAP_DEB_DATE "%a, %d %b %Y %H:%M:%S +0000" UTC)
configure_file(${pkg_dir}/changelog.Debian.in ${CMAKE_CURRENT_BINARY_DIR}/changelog.Debian @ONLY)
add_custom_command(
  OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/changelog.Debian.gz
  COMMAND ${GZIP} -9nkf ${CMAKE_CURRENT_BINARY_DIR}/changelog.Debian
  DEPENDS ${CMAKE_CURRENT_BINARY_DIR}/changelog.Debian
  VERBATIM)
add_custom_command(
  OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/changelog.gz
  COMMAND ${CMAKE_COMMAND} -E copy ${PROJECT_SOURCE_DIR}/CHANGELOG.md
          ${CMAKE_CURRENT_BINARY_DIR}/changelog
  COMMAND ${GZIP} -9nf ${CMAKE_CURRENT_BINARY_DIR}/changelog
  DEPENDS ${PROJECT_SOURCE_DIR}/CHANGELOG.md
  VERBATIM)
add_custom_target(package_changelog ALL DEPENDS ${CMAKE_CURRENT_BINARY_DIR}/changelog.gz
  ${CMAKE_CURRENT_BINARY_DIR}/changelog.Debian.gz)
foreach(comp_pkg lmap:lmap liblmap:liblmap${LMAP_ABI_VERSION} dev:liblmap-dev)
  string(REPLACE ":" ";" parts ${comp_pkg})
  list(GET parts 0 comp)
  list(GET parts 1 pkg)
  install(FILES ${pkg_dir}/copyright ${CMAKE_CURRENT_BINARY_DIR}/changelog.gz
                ${CMAKE_CURRENT_BINARY_DIR}/changelog.Debian.gz
          DESTINATION ${doc_dir}/${pkg} COMPONENT ${comp})
endforeach()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME lmap)
set(CPACK_PACKAGE_VENDOR "the lmap authors")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
# No CPACK_PACKAGE_DESCRIPTION_SUMMARY: each package's summary is the first
# line of its own description.
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL lmap liblmap dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE ${LMAP_DEB_RELEASE})
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# liblmap1's shlibs file: a program linked against it depends on it.
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY "=")

set(CPACK_DEBIAN_LMAP_PACKAGE_NAME lmap)
set(CPACK_DEBIAN_LMAP_PACKAGE_DEPENDS "passwd")
set(CPACK_DEBIAN_LMAP_DESCRIPTION "label-map server and tool for ReLabel-style soft labels
lmapd serves soft labels pooled from dense label maps (ReLabel, Token
Labeling: top-K classes and scores per grid cell) over HTTP/JSON to many
trainers from one memory-mapped store: image id and crop box in, the soft
multi-label target of RoIAlign and softmax out. lmap imports the official
release, builds, inspects, verifies and draws stores and queries servers.
Ships a sandboxed systemd unit (not enabled: set the store in
/etc/lmap/lmapd.env first) and a system user lmap.")
set(CPACK_DEBIAN_LMAP_PACKAGE_CONTROL_EXTRA
  ${pkg_dir}/conffiles ${pkg_dir}/postinst ${pkg_dir}/postrm)
set(CPACK_DEBIAN_LMAP_PACKAGE_CONTROL_STRICT_PERMISSION ON)

set(CPACK_DEBIAN_LIBLMAP_PACKAGE_NAME liblmap${LMAP_ABI_VERSION})
set(CPACK_DEBIAN_LIBLMAP_PACKAGE_SECTION libs)
# ldconfig by trigger, as Debian does it (CPack's own postinst and postrm
# call it too: lintian's maintscript-calls-ldconfig, harmless).
set(CPACK_DEBIAN_LIBLMAP_PACKAGE_CONTROL_EXTRA ${pkg_dir}/triggers)
set(CPACK_DEBIAN_LIBLMAP_DESCRIPTION "thin C client of lmapd, the label-map server
liblmap asks an lmapd server for soft labels: batches into a caller's
float buffer over .npy, sparse results, maps and store information, with
keep-alive and failover over several servers.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME liblmap-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
  "liblmap${LMAP_ABI_VERSION} (= ${PROJECT_VERSION}-${LMAP_DEB_RELEASE}), libcurl4-openssl-dev | libcurl-dev, libjansson-dev")
set(CPACK_DEBIAN_DEV_DESCRIPTION "thin C client of lmapd, the label-map server (development files)
Headers, the static library, the CMake package (find_package(lmap):
lmap::client, lmap::client_static) and the pkg-config file lmap.pc of
liblmap, the C client of lmapd.")

include(CPack)
